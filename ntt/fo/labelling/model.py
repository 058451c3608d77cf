"""A bank as a FiftyOne model: ``dataset.apply_model(nfo.load_model(dataset, "pets"), label_field="ntt")``.

FiftyOne's standard arguments work: ``batch_size`` (images per forward pass: each batch FiftyOne's loader hands
``predict_all`` goes through the models as one batch; the settings' own ``batch_size`` does not apply, except
that an automatic one (0) caps it at what fits the GPU), ``confidence_thresh``, ``skip_failures`` and
``output_dir`` (instance masks written as PNGs, ``Detection.mask_path``). FiftyOne's data loader hands the model
file paths (``SupportsGetItem``) and ntt decodes them with its own loader, so ``apply_model`` labels a view
exactly as ``segment`` does, and an unreadable image leaves only its own sample unlabelled (named in a warning),
not its batch. It labels the view it is given (references included).

Provenance. ``evaluate`` reads an ``apply_model`` field's bank as it reads a ``segment`` field's (``provenance.py``:
the bank's shot samples as its references, left out, and its classes, the only ones counted). FiftyOne never tells
a model its output field, so the field is found from its labels:

- every ``Detections`` the model returns names its bank (``provenance.LABEL_KEY``: the fingerprint, 64 bytes per
  sample, no query);
- the first batch of a run on a dataset registers the bank's provenance in the dataset's info
  (``provenance.REGISTRY`` + fingerprint: one single-key write per run, durable, kept after the bank is renamed,
  rebuilt or deleted);
- ``provenance.recorded`` (what ``evaluate`` reads) records it on the field when the field records none or another
  bank than its labels name (they replaced the labels of another run).

This needs no label field and no per-sample query; works for any field and view, with ``skip_failures`` (a batch
that fails leaves no labels) and for runs killed midway; keeps concurrent runs of several banks on several fields
apart (each label names its own bank); and writes no schema during the run. The other way, finding the field when
FiftyOne leaves the model, would need a reload of the dataset there (the schema lock's), after which views iterated
before it no longer see fields added later (FiftyOne 1.22 caches the sample class in a view), and would miss killed
runs.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import fiftyone as fo
import fiftyone.core.models as fom

from ntt.fo.checks import check_weights
from ntt.fo.embeddings import save_embeddings
from ntt.fo.labelling.provenance import LABEL_KEY, Source, register_model
from ntt.fo.labelling.segment import new_segmenter, resolve_settings, to_detections
from ntt.fo.outages import patiently
from ntt.fo.references import NTTFiftyOneError
from ntt.fo.store import dataset_key, dataset_of
from ntt.predict.segmenter import ImageResult, Segmenter

log = logging.getLogger(__name__)


class NTTModel(fom.Model, fom.SamplesMixin, fom.SupportsGetItem):
    """A bank and its settings as a ``fiftyone.core.models.Model`` for image collections: ``predict_all``
    returns one ``fo.Detections`` per image (as ``segment`` writes them, marked with the bank's fingerprint),
    None for an image that could not be segmented (it is named in a warning).

    ``source``: the bank's provenance (``Source``); ``dataset``: the dataset it was loaded from, whose info
    registers it. Without them (a bare segmenter) nothing is marked nor recorded."""

    def __init__(self, segmenter: Segmenter, source: Source | None = None, dataset=None, keep_embeddings: bool = True):
        fom.SamplesMixin.__init__(self)  # FiftyOne then gives predict_all the samples: the dataset to register with
        self.segmenter = segmenter
        self.config = SimpleNamespace(confidence_thresh=None)  # apply_model defers its threshold to this
        self.provenance = source.info(excluded=[]) if source is not None else None  # apply_model excludes none
        self._names = dict(zip(segmenter.bank.class_ids, segmenter.bank.class_names))
        self._preprocess = False
        self._home = dataset  # the bank's: registered with when no samples are given
        self._registered: set[str] = set()  # the datasets registered with in this run, by key
        self._fits: int | None = None  # the largest forward batch that fit in memory, once one did not
        self.keep_embeddings = keep_embeddings  # each prediction's vector, by label id (``ntt.fo.embeddings``)

    def __enter__(self):
        self._registered = set()  # each apply_model registers again: the dataset's info may have been edited
        return self

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

    def predict(self, arg, sample=None):
        return self.predict_all([arg], samples=None if sample is None else [sample])[0]

    def predict_all(self, args, samples=None):
        """Detections for images: file paths (decoded as ``segment`` does) or RGB uint8 (H, W, 3) arrays, all in
        one forward batch; ``samples``: their samples (FiftyOne's), whose dataset registers the bank."""
        sources = list(args)
        if not sources:
            return []
        dataset = dataset_of(samples[0].dataset) if samples else self._home
        self._register(dataset)
        found = [self._detections(res) for res in self._segment(sources)]
        if self.keep_embeddings and dataset is not None:  # saved before FiftyOne saves the labels
            sample_ids = [s.id for s in samples] if samples else [None] * len(found)
            patiently(lambda: save_embeddings(dataset, _vectors(found, sample_ids)))
        return [dets for dets, _ in found]

    def _register(self, dataset) -> None:
        """Register the bank's provenance with ``dataset`` once per run, before any label of it is saved."""
        if self.provenance is None or dataset is None or dataset_key(dataset) in self._registered:
            return
        register_model(dataset, self.provenance)
        self._registered.add(dataset_key(dataset))

    def _segment(self, sources: list) -> list[ImageResult]:
        """The images as one forward batch: FiftyOne's batch is the batch size. Smaller once a batch ran out of
        memory or the settings fit the batch to the GPU (batch_size 0): the segmenter lowers its batch size."""
        want = len(sources)
        self.segmenter.batch_size = min(want, self._fits or want)
        results = list(self.segmenter.run(sources))
        if self.segmenter.batch_size < want:
            self._fits = self.segmenter.batch_size
        return results

    def _detections(self, res: ImageResult) -> tuple[fo.Detections | None, dict]:
        """An image's ``Detections`` (None: it could not be segmented) and each one's vector by label id."""
        if res.instances is None:
            where = res.source if isinstance(res.source, str) else "an image"
            log.warning("ntt: %s not segmented: %s", where, res.error)
            return None, {}
        dets = to_detections(res.instances, self._names, self.segmenter.bank.shots)
        found = res.instances.embeddings
        vectors = {} if found is None else dict(zip((d.id for d in dets.detections), found))
        thresh = self.config.confidence_thresh
        if thresh is not None:
            dets.detections = [d for d in dets.detections if d.confidence >= thresh]
        if self.provenance is not None:
            dets[LABEL_KEY] = self.provenance["ntt_bank_fingerprint"]
        return dets, {d.id: vectors[d.id] for d in dets.detections if d.id in vectors}


def _vectors(found: list[tuple], sample_ids: list) -> list[tuple]:
    """The rows ``save_embeddings`` takes, from ``_detections``' results and their samples' ids."""
    return [(sid, lid, vec) for (_, vectors), sid in zip(found, sample_ids) for lid, vec in vectors.items()]


def load_model(
    coll,
    bank: str,
    preset: str | None = None,
    config=None,
    device: str | None = None,
    cache: bool | None = None,
    keep_embeddings: bool = True,
) -> NTTModel:
    """The model for ``coll.apply_model``: bank ``bank`` of ``coll``'s dataset with the settings ``segment``
    would use (the bank's own, or ``preset``'s, with ``config`` overrides; ``device`` or "auto"). ``cache``:
    use the candidate cache (None: the settings'). ``keep_embeddings``: keep each prediction's vector, as
    ``segment`` does (saved before FiftyOne saves the label). Models load here; checkpoints missing are named
    at once. ``apply_model``'s ``batch_size`` is the images per forward pass (the settings' ``batch_size`` is
    not used)."""
    source, cfg = resolve_settings(coll, bank, preset=preset, config=config, device=device, cache=cache)
    check_weights(cfg)
    if coll.media_type != "image":
        raise NTTFiftyOneError(f"NTT segments images; this collection's media type is {coll.media_type}")
    return NTTModel(new_segmenter(source.bank, cfg), source, dataset_of(coll), keep_embeddings=keep_embeddings)


def register_zoo_source() -> str:
    """Make ``foz.load_zoo_model("ntt-sam2-dinov2", dataset=ds, bank="pets")`` work, offline: copy this package's
    zoo manifest (``ntt/fo/zoo``) into FiftyOne's model zoo folder (``fo.config.model_zoo_dir``). With the
    network, ``foz.register_zoo_model_source(<URL of this repository>)`` does the same. Returns the folder."""
    import shutil
    from pathlib import Path

    # FiftyOne imports the folder's __init__.py under the folder's name: "ntt" would replace the ntt package
    target = Path(fo.config.model_zoo_dir) / "ntt-zoo"
    shutil.copytree(
        Path(__file__).parents[1] / "zoo", target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    return str(target)
