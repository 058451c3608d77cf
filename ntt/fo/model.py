"""A bank as a FiftyOne model: ``dataset.apply_model(nfo.load_model(dataset, "pets"), label_field="ntt")``.

FiftyOne's standard arguments work: ``batch_size`` (images per forward pass), ``confidence_thresh``,
``skip_failures`` and ``output_dir`` (instance masks written as PNGs, ``Detection.mask_path``). FiftyOne's data
loader hands the model file paths (``SupportsGetItem``) and ntt decodes them with its own loader, so
``apply_model`` labels a view exactly as ``segment`` does, and an unreadable image leaves only its own sample
unlabelled (named in a warning), not its batch. Unlike ``segment`` it records nothing on the field and does
not leave references out: it labels the view it is given.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import fiftyone.core.models as fom

from ..segmenter import Segmenter
from .checks import check_weights
from .references import NTTFiftyOneError
from .segment import new_segmenter, resolve_settings, to_detections

log = logging.getLogger(__name__)


class NTTModel(fom.Model, fom.SupportsGetItem):
    """A bank and its settings as a ``fiftyone.core.models.Model`` for image collections: ``predict_all``
    returns one ``fo.Detections`` per image (as ``segment`` writes them), None for an image that could not be
    segmented (it is named in a warning)."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter
        self.config = SimpleNamespace(confidence_thresh=None)  # apply_model defers its threshold to this
        self._names = dict(zip(segmenter.bank.class_ids, segmenter.bank.class_names))
        self._preprocess = False

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    @property
    def has_logits(self) -> bool:
        return False

    def build_get_item(self, field_mapping=None):
        """What FiftyOne's data loader gives the model per sample: its file path (ntt decodes it)."""
        from fiftyone.utils.torch import GetItem  # lazily: it imports torchvision, which forms need not wait for

        class FilePath(GetItem):
            @property
            def required_keys(self):
                return ["filepath"]

            def __call__(self, d):
                return d["filepath"]

        return FilePath(field_mapping=field_mapping)

    @property
    def has_collate_fn(self) -> bool:
        return True

    @staticmethod
    def collate_fn(batch):
        return list(batch)  # file paths, as they are

    def predict(self, arg):
        return self.predict_all([arg])[0]

    def predict_all(self, args):
        """Detections for images: file paths (decoded as ``segment`` does) or RGB uint8 (H, W, 3) arrays."""
        out = []
        for res in self.segmenter.run(list(args)):
            if res.instances is None:
                where = res.source if isinstance(res.source, str) else "an image"
                log.warning("ntt: %s not segmented: %s", where, res.error)
                out.append(None)
                continue
            dets = to_detections(res.instances, self._names, self.segmenter.bank.shots)
            thresh = self.config.confidence_thresh
            if thresh is not None:
                dets.detections = [d for d in dets.detections if d.confidence >= thresh]
            out.append(dets)
        return out


def load_model(
    coll,
    bank: str,
    preset: str | None = None,
    config=None,
    device: str | None = None,
    cache: bool | None = None,
) -> NTTModel:
    """The model for ``coll.apply_model``: bank ``bank`` of ``coll``'s dataset with the settings ``segment``
    would use (the bank's own, or ``preset``'s, with ``config`` overrides; ``device`` or "auto"). ``cache``:
    use the candidate cache (None: the settings'). Models load here; checkpoints missing are named at once."""
    source, cfg = resolve_settings(coll, bank, preset=preset, config=config, device=device, cache=cache)
    check_weights(cfg)
    if coll.media_type != "image":
        raise NTTFiftyOneError(f"NTT segments images; this collection's media type is {coll.media_type}")
    return NTTModel(new_segmenter(source.bank, cfg))


def register_zoo_source() -> str:
    """Make ``foz.load_zoo_model("ntt-sam2-dinov2", dataset=ds, bank="pets")`` work, offline: copy this package's
    zoo manifest (``ntt/fo/zoo``) into FiftyOne's model zoo folder (``fo.config.model_zoo_dir``). With the
    network, ``foz.register_zoo_model_source(<URL of this repository>)`` does the same. Returns the folder."""
    import shutil
    from pathlib import Path

    import fiftyone as fo

    # FiftyOne imports the folder's __init__.py under the folder's name: "ntt" would replace the ntt package
    target = Path(fo.config.model_zoo_dir) / "ntt-zoo"
    shutil.copytree(
        Path(__file__).parent / "zoo", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    return str(target)
