"""Resolve model and dataset arguments, and give Ultralytics a private working copy of a dataset.

Bare names (``yolov8n-coco.pt``, ``tiny_coco``, ``coco8``) resolve through the assets directory:
``YOLOTUNE_ASSETS``, else ``../shared/assets`` when it exists. Paths are taken as they are.
Ultralytics writes ``labels/*.cache`` next to a dataset's labels, so every dataset is validated
through a working copy (links to the images and labels) under yolotune's scratch directory:
nothing is ever written next to the user's data.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolotune import _yaml
from yolotune._env import workspace_dir
from yolotune._files import whole_file
from yolotune._numbers import is_whole
from yolotune._warn import warn_once
from yolotune.errors import YolotuneError, yaml_problem

__all__ = ["DATA_CHANGED", "Dataset", "assets_dir", "prepare_dataset", "resolve_data", "resolve_model", "val_subset"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
_SPLITS = ("train", "val")


def assets_dir() -> Path | None:
    """Return the assets directory, or None when there is none.

    ``YOLOTUNE_ASSETS`` wins; otherwise ``../shared/assets`` relative to the working directory or
    to the source checkout, whichever exists.
    """
    env = os.environ.get("YOLOTUNE_ASSETS")
    if env:
        return Path(env).expanduser()
    candidates = [
        Path.cwd().parent / "shared" / "assets",
        Path(__file__).resolve().parents[2] / "shared" / "assets",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _looked(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _bundled(root: Path | None, folder: str, what: str) -> str:
    """Where to find what was not found: the assets directory's ``folder`` entries, or how to set one."""
    if root is None:
        return " (no assets directory: set YOLOTUNE_ASSETS)"
    try:
        names = sorted(p.name for p in (root / folder).iterdir() if not p.name.startswith("."))
    except OSError:
        names = []
    return f"; pass {what}" + (f", or a bundled name: {', '.join(names)}" if names else "")


def resolve_model(name: str | os.PathLike[str]) -> Path:
    """Resolve a model argument (path, or bare name in ``<assets>/weights``) to an existing file.

    Raises:
        YolotuneError: When no file exists; the message names every place looked at.
    """
    path = Path(name).expanduser()
    tried = [path.resolve()]
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise YolotuneError(f"model '{name}' is a directory; pass an Ultralytics .pt checkpoint")
    root = assets_dir()
    if root is not None and len(path.parts) == 1:
        candidate = root / "weights" / path.name
        tried.append(candidate)
        if candidate.is_file():
            return candidate
    if path.suffix in {".yaml", ".yml"}:  # Ultralytics would build it untrained; yolotune compresses trained ones
        raise YolotuneError(
            f"model '{name}' names an architecture, not trained weights: pass the trained detector's .pt checkpoint"
        )
    hint = _bundled(root, "weights", "a trained Ultralytics .pt checkpoint")
    raise YolotuneError(f"model '{name}' not found; looked at {_looked(tried)}{hint}")


def resolve_data(name: str | os.PathLike[str]) -> Path:
    """Resolve a dataset argument (data yaml, dataset dir, or bare name in ``<assets>/datasets``).

    Raises:
        YolotuneError: When no data yaml exists; the message names every place looked at.
    """
    path = Path(name).expanduser()
    tried: list[Path] = []
    candidates = [path] if path.suffix in {".yaml", ".yml"} else [path, path / "data.yaml"]
    root = assets_dir()
    if root is not None and len(path.parts) == 1:
        stem = path.name.removesuffix(".yaml")
        candidates += [root / "datasets" / stem / "data.yaml", root / "datasets" / path.name]
    for candidate in candidates:
        tried.append(candidate.resolve())
        if candidate.is_file():
            return candidate.resolve()
    if path.is_dir():
        raise YolotuneError(
            f"dataset folder {path} has no data.yaml: pass the data yaml itself (train, val, names) as for Ultralytics"
        )
    hint = _bundled(root, "datasets", "a data yaml (train, val, names) as for Ultralytics")
    raise YolotuneError(f"dataset '{name}' not found; looked at {_looked(tried)}{hint}")


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A dataset ready for Ultralytics: a private data yaml and the image lists of its splits.

    Attributes:
        source: The user's data yaml.
        yaml_path: The working copy's data yaml (pass this to Ultralytics).
        names: Class names by index.
        train_images: Training images (calibration and fine-tuning use only these).
        val_images: Validation images (scoring uses only these).
        train_labels: Training images with a non-empty label file (fine-tuning needs some).
        shared: Validation images that are training images too (the same file, or equal bytes):
            calibration and recovery see them, and plans do not fine-tune.
    """

    source: Path
    yaml_path: Path
    names: dict[int, str]
    train_images: tuple[Path, ...]
    val_images: tuple[Path, ...]
    train_labels: int
    shared: tuple[Path, ...] = ()

    @functools.cached_property
    def digests(self) -> dict[str, str]:
        """What each split (``train``, ``val``) holds: SHA-256 of its images' names and sizes and its label files.

        A study records them, and refuses to go on over other images or labels (``tune export``
        re-measures on the validation split, so it compares that one only). Names, not paths: a
        dataset moved whole keeps its digests. Image bytes are not read (a large dataset's images are
        gigabytes); an image replaced by another of the very same size is not seen. Worked out when
        first asked for (the label files are read again), not by every build.
        """
        digests = {}
        for split, images in (("train", self.train_images), ("val", self.val_images)):
            digest = hashlib.sha256()
            for image in images:
                label = _label_for(image)
                try:
                    labels = hashlib.sha256(label.read_bytes()).hexdigest()
                except OSError:  # no label file: a negative image
                    labels = "-"
                digest.update(f"{image.name}\0{image.stat().st_size}\0{labels}\n".encode())
            digests[split] = digest.hexdigest()
        return digests


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = _yaml.load(path.read_text(), exponents=False)  # as Ultralytics reads it
    except yaml.YAMLError as exc:
        raise YolotuneError(f"data yaml {path} is not valid YAML: {yaml_problem(exc)}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise YolotuneError(f"cannot read data yaml {path}: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise YolotuneError(f"data yaml {path} is not a mapping with 'train', 'val' and 'names'")
    return data


def _split_images(data: dict[str, Any], split: str, root: Path, source: Path) -> list[Path]:
    """A split's images: its folders' (searched recursively) and its ``.txt`` lists', as Ultralytics reads them."""
    value = data.get(split)
    if not value:
        raise YolotuneError(
            f"data yaml {source} has no '{split}' split; add '{split}: images/{split}' "
            "(a folder of images with labels in the matching labels/ folder)"
        )
    entries = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise YolotuneError(
                f"'{split}' of {source} must be a folder or a .txt list of images (or a list of them); got {entry!r}"
            )
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            images += sorted(i for i in p.rglob("*") if i.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix == ".txt":
            images += _listed_images(p, root, split, source)
        else:
            kind = "image list" if p.suffix == ".txt" else "folder"
            raise YolotuneError(f"'{split}' {kind} of {source} not found: {p}")
    return images


def _listed_images(listing: Path, root: Path, split: str, source: Path) -> list[Path]:
    """Images named in a ``.txt`` list, one per line.

    ``./x`` is read from the list's folder; other relative paths from the dataset root, then from
    the working directory (where Ultralytics reads them).
    """
    images = []
    for n, line in enumerate(listing.read_text(errors="replace").splitlines(), 1):
        entry = line.strip()
        if not entry:
            continue
        given = Path(entry).expanduser()
        if given.is_absolute():
            tries = [given]
        elif entry.startswith("./"):
            tries = [listing.parent / given]
        else:
            tries = [root / given, Path.cwd() / given, listing.parent / given]
        found = next((Path(os.path.abspath(t)) for t in tries if t.is_file()), None)
        if found is None:
            raise YolotuneError(f"'{split}' list {listing} line {n} names an image that does not exist: {entry}")
        images.append(found)
    return images


def _keys(names: dict[Any, Any]) -> str:
    """A mapping's keys as a short list (``0, 1, ..., 41``)."""
    keys = [repr(k) for k in names]
    return ", ".join(keys if len(keys) <= 6 else [*keys[:3], "...", *keys[-2:]])


def _check_labels(images: list[Path], classes: int, split: str, source: Path) -> None:
    """Refuse label lines Ultralytics would drop their image for (it warns and validates without it).

    A line is ``class x y w h`` (or a polygon ``class x1 y1 x2 y2 ...``), normalized to [0, 1], with
    ``class`` one of the yaml's ``names``.
    """
    for image in images:
        label = _label_for(image)
        try:
            text = label.read_text(errors="replace")
        except OSError:
            continue  # no label file: an image without boxes
        kinds: dict[bool, int] = {}  # polygon or box -> first line
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            where = f"label file {label} line {n}"
            kinds.setdefault(len(fields) > 6, n)  # Ultralytics' test for a polygon; 6 values is neither
            if len(kinds) > 1:  # Ultralytics then reads every line as a polygon, a box as a 2-point one
                raise YolotuneError(
                    f"label file {label} mixes boxes and polygons (lines {kinds[False]} and {kinds[True]}); "
                    "write every object of a file the same way"
                )
            try:
                numbers = [float(f) for f in fields]
            except ValueError:
                raise YolotuneError(f"{where} is not numbers: {line.strip()[:60]!r}; write 'class x y w h'") from None
            if len(numbers) != 5 and (len(numbers) < 7 or len(numbers) % 2 == 0):
                raise YolotuneError(
                    f"{where} has {len(numbers)} values; a box is 'class x y w h' (5 values, normalized to 0–1)"
                )
            cls = numbers[0]
            if cls != int(cls) or not 0 <= cls < classes:
                raise YolotuneError(
                    f"{where}: class {fields[0]}, but {source} names {classes} class(es) (0–{classes - 1}); "
                    f"fix the line or the yaml's names ('{split}' split)"
                )
            if not all(0 <= v <= 1 for v in numbers[1:]):
                raise YolotuneError(
                    f"{where} has coordinates outside 0–1: {line.strip()[:60]!r}; "
                    "boxes are normalized by the image's width and height"
                )


#: The image formats Ultralytics reads, as PIL names them (its ``IMG_FORMATS``, and JPEG 2000).
_IMAGE_FORMATS = frozenset({"bmp", "dng", "jpeg", "jpeg2000", "mpo", "pfm", "png", "tiff", "webp", "heic", "heif"})


def _check_images(images: list[Path], split: str, source: Path) -> None:
    """Refuse an image Ultralytics would skip (it counts it corrupt and validates without it).

    As Ultralytics checks: PIL's ``verify``, at least 10 pixels a side, a format it reads (by the
    file's content, not its name), and a JPEG without its end marker must decode in full
    (Ultralytics re-saves such a file when it can, and skips it when not). Ultralytics'
    ``check_image`` is not called: it rewrites such a JPEG where it lies, and these are the user's
    files (or ``../shared``), and this module does not import Ultralytics.
    """
    from PIL import Image, UnidentifiedImageError

    for image in images:
        try:
            if image.stat().st_size == 0:
                raise ValueError("the file is empty")
            with Image.open(image) as im:
                im.verify()
                width, height = im.size
                kind = str(im.format or "").lower()
            if kind not in _IMAGE_FORMATS:
                raise ValueError(f"a {kind.upper() or 'unknown'} image, which Ultralytics does not read")
            if min(width, height) < 10:
                raise ValueError(f"{width}×{height} pixels, under Ultralytics' 10")
            if kind in ("jpeg", "mpo"):
                with image.open("rb") as f:
                    f.seek(-2, os.SEEK_END)
                    ended = f.read() == b"\xff\xd9"
                if not ended:
                    with Image.open(image) as im:
                        im.load()
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, UnidentifiedImageError | ImportError):  # an opener plugin that is not there
                reason = "not an image format PIL can read"
            raise YolotuneError(
                f"image {image} ('{split}' split of {source}) cannot be read: {reason[:120]}; Ultralytics would skip "
                f"it and change {'the mAP' if split == 'val' else 'calibration and fine-tuning'}: replace it or take "
                "it out"
            ) from None


def _shared_images(train: list[Path], val: list[Path]) -> list[Path]:
    """Validation images that are training images too: the same file, or equal bytes under another name.

    Files are compared by resolved path, then by content where sizes match (each file read once).
    """
    resolved = {image.resolve() for image in train}
    by_size: dict[int, list[Path]] = {}
    for image in train:
        by_size.setdefault(image.stat().st_size, []).append(image)
    digests: dict[int, set[str]] = {}  # per size, the training files' digests, made when first needed

    def digest(path: Path) -> str:
        return hashlib.sha1(path.read_bytes()).hexdigest()

    shared = []
    for image in val:
        size = image.stat().st_size
        if image.resolve() in resolved:
            shared.append(image)
        elif size in by_size:
            if size not in digests:
                digests[size] = {digest(t) for t in by_size[size]}
            if digest(image) in digests[size]:
                shared.append(image)
    return shared


def _warn_shared(source: Path, shared: tuple[Path, ...]) -> None:
    """Say once per process that a dataset's splits share images, and what yolotune does about it."""
    if shared:
        warn_once(
            logger,
            "data yaml %s: %d 'val' image(s) are 'train' images too (e.g. %s): calibration and recovery see them, "
            "so the mAP may read high, and no plan fine-tunes; take them out of one split to fine-tune",
            source,
            len(shared),
            shared[0],
        )


def _label_for(image: Path) -> Path:
    parts = list(image.parts)
    if "images" not in parts:  # no images/ folder: Ultralytics looks for labels beside the image
        return image.with_suffix(".txt")
    idx = len(parts) - 1 - parts[::-1].index("images")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def _dataset_root(data: dict[str, Any], source: Path) -> Path:
    """The folder a data yaml's splits are relative to: its ``path:``, else the yaml's own folder.

    A relative ``path:`` is read from the working directory, as Ultralytics reads it, when the
    splits are there; otherwise from the yaml's folder, so the same yaml works from anywhere.
    """
    given = data.get("path")
    if not given:
        return source.parent
    path = Path(str(given)).expanduser()
    if path.is_absolute():
        return path
    entries: list[str] = []
    for split in _SPLITS:
        value = data.get(split)
        entries += [str(e) for e in (value if isinstance(value, list) else [value]) if e]
    for root in (path.resolve(), (source.parent / path).resolve()):
        if entries and all(Path(e).is_absolute() or (root / e).exists() for e in entries):
            return root
    return (source.parent / path).resolve()


def _has_boxes(image: Path) -> bool:
    label = _label_for(image)
    try:
        return label.stat().st_size > 0 and bool(label.read_text(errors="replace").strip())
    except OSError:
        return False


def prepare_dataset(name: str | os.PathLike[str]) -> Dataset:
    """Resolve a dataset and build (once) its private working copy for Ultralytics.

    Raises:
        YolotuneError: Missing yaml, a missing split, no images, no class names, or no labels
            in the validation split.
    """
    source = resolve_data(name)
    data = _load_yaml(source)
    root = _dataset_root(data, source)
    names = data.get("names")
    nc: Any = data.get("nc")
    if names is None and is_whole(nc) and int(nc) > 0:
        names = [f"class_{i}" for i in range(int(nc))]  # as Ultralytics names them
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise YolotuneError(
            f"data yaml {source} has no class 'names': add 'names:' as a list of class names "
            "(or a mapping from class index to name), in the order the model was trained with"
        )
    try:
        indices = sorted(int(k) for k in names)
    except (TypeError, ValueError):
        indices = []
    if indices != list(range(len(names))):
        raise YolotuneError(
            f"data yaml {source}: the 'names' keys must be the class indices 0–{len(names) - 1} with no gaps; "
            f"got {_keys(names)}"
        )
    if nc is not None and not is_whole(nc):
        raise YolotuneError(f"data yaml {source}: nc must be a whole number (unquoted); got {nc!r}")
    if nc is not None and nc != len(names):
        raise YolotuneError(f"data yaml {source} says nc: {nc} but 'names' lists {len(names)}: make them agree")
    splits = {s: _split_images(data, s, root, source) for s in _SPLITS}
    for split, images in splits.items():
        if not images:
            raise YolotuneError(f"'{split}' split of {source} holds no images")
    labelled = {split: sum(1 for image in images if _has_boxes(image)) for split, images in splits.items()}
    if not labelled["val"]:
        where = _label_for(splits["val"][0]).parent
        raise YolotuneError(
            f"'val' split of {source} has no labels, so mAP cannot be measured: put one .txt per image "
            f"(class x y w h per box) under {where}"
        )

    # the copy links each image and label: a new copy when the yaml, the image list, an image's size or
    # a label file changes (edits inside linked images are seen through the links; an image replaced
    # by one of another size is checked again, in the new copy)
    listing = hashlib.sha1(f"{source}:{source.stat().st_mtime_ns}".encode())
    for split, images in splits.items():
        for image in images:
            label = _label_for(image)  # an edited label is checked again, in a new copy
            stamp = label.stat().st_mtime_ns if label.exists() else None
            listing.update(f"\n{split}:{image}:{image.stat().st_size}:{stamp}".encode())
    key = listing.hexdigest()[:16]
    copy = workspace_dir() / "datasets" / key
    if not (copy / "data.yaml").exists():  # checked once per copy: a bad label makes none
        for split, images in splits.items():
            _check_images(images, split, source)
            _check_labels(images, len(names), split, source)
        tmp = copy.with_name(f"{key}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shared_list = "".join(f"{image}\n" for image in _shared_images(splits["train"], splits["val"]))
        (tmp / "shared.txt").write_text(shared_list)
        for split, images in splits.items():
            for i, image in enumerate(images):
                # flat, unique names: <split>/<index>_<name>
                link_name = f"{i:06d}_{image.name}"
                img_link = tmp / "images" / split / link_name
                img_link.parent.mkdir(parents=True, exist_ok=True)
                img_link.symlink_to(image)
                label = _label_for(image)
                if label.exists():
                    lbl_link = (tmp / "labels" / split / link_name).with_suffix(".txt")
                    lbl_link.parent.mkdir(parents=True, exist_ok=True)
                    lbl_link.symlink_to(label)
        spec = {"path": str(copy), "train": "images/train", "val": "images/val", "names": names}
        (tmp / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        try:
            tmp.rename(copy)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    listed = copy / "shared.txt"  # a copy made before it was written: its splits are compared now
    if listed.exists():
        shared = tuple(Path(line) for line in listed.read_text().splitlines())
    else:
        shared = tuple(_shared_images(splits["train"], splits["val"]))
    _warn_shared(source, shared)
    return Dataset(
        source=source,
        yaml_path=copy / "data.yaml",
        names={int(k): str(v) for k, v in names.items()},
        train_images=tuple(splits["train"]),
        val_images=tuple(splits["val"]),
        train_labels=labelled["train"],
        shared=shared,
    )


#: Why a dataset's digest (``Dataset.digest``) may differ from the one a study recorded.
DATA_CHANGED = (
    "images or labels added, removed or edited since, or a relative `path:` in its yaml read from another "
    "working directory"
)


def val_subset(dataset: Dataset, count: int) -> Dataset:
    """The same dataset validated on ``count`` of its validation images (evenly spaced, deterministic).

    Used by the cheap rung of multi-fidelity search; ``count`` at or above the split's size
    returns ``dataset`` itself. The subset is a split of its own (``images/val<count>`` and
    ``labels/val<count>``, links to the same files), so Ultralytics keeps its own label cache for it
    (``labels/val<count>.cache``): with a list of the split's own images it would share
    ``labels/val.cache`` with the whole split, and rescan and rewrite it at every switch between them.
    """
    n = len(dataset.val_images)
    if count >= n:
        return dataset
    if count < 1:
        raise YolotuneError(f"a validation subset needs at least one image; got {count}")
    picks = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
    root = dataset.yaml_path.parent
    links = sorted((root / "images" / "val").iterdir())
    split = f"val{count}"
    yaml_path = root / f"data-{split}.yaml"
    # written last: once it is there, so are the links (one naming a list of images is from an older yolotune)
    if not yaml_path.exists() or _load_yaml(yaml_path).get("val") != f"images/{split}":
        for i in picks:
            label = (root / "labels" / "val" / links[i].name).with_suffix(".txt")
            pairs = [(root / "images" / split / links[i].name, links[i])]
            if label.exists():
                pairs.append(((root / "labels" / split / links[i].name).with_suffix(".txt"), label))
            for link, source in pairs:
                link.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):  # another process made the same link
                    link.symlink_to(source.resolve())
        spec = {**_load_yaml(dataset.yaml_path), "val": f"images/{split}"}
        with whole_file(yaml_path) as partial:
            partial.write_text(yaml.safe_dump(spec, sort_keys=False))
    return Dataset(
        source=dataset.source,
        yaml_path=yaml_path,
        names=dataset.names,
        train_images=dataset.train_images,
        val_images=tuple(dataset.val_images[i] for i in picks),
        train_labels=dataset.train_labels,
        shared=tuple(p for p in (dataset.val_images[i] for i in picks) if p in set(dataset.shared)),
    )
