"""The one place that knows Ultralytics: loading, model surgery, naming, training, export, validation.

Everything else in yolotune sees plain ``torch.nn.Module`` objects, file paths and numbers.

Surgery: YOLOv8 ``C2f`` and YOLO11 ``C3k2`` split one convolution's output with ``chunk``; that
breaks torch-pruning's channel index mapping. ``make_prunable`` replaces them by ``C2fSplitFree``,
which computes the same function with two 1x1 convolutions. The class lives in this importable
module, so a pruned checkpoint reloads in a fresh process with plain ``YOLO(path)``.

Export: Ultralytics' ``DFL`` transposes (b, 4, 16, anchors) to (b, 16, 4, anchors) and takes the
softmax over axis 1, which ONNX Runtime's CPU kernel runs about 8x slower than the same softmax
over axis 2 without the transpose (0.78 ms of a 6.5 ms INT8 yolov8n at 320 px).
``export_onnx`` swaps it for ``FastDFL``: softmax over the bins in place, then a matmul with
the integral weights. Outputs equal the original's up to float rounding.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yolotune._env import configure_ultralytics, workspace_dir
from yolotune._files import whole_file
from yolotune._warn import warn_once
from yolotune.errors import StepError, YolotuneError

configure_ultralytics()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

if TYPE_CHECKING:
    from yolotune.assets import Dataset

#: Ultralytics models and blocks carry dynamic attributes (``model.model``, ``m.f``): typed as Any.
UltraModule = Any

__all__ = [
    "EXPORT_FORMAT",
    "C2fSplitFree",
    "FastDFL",
    "FinetuneReport",
    "ModelLayout",
    "activation_statistics",
    "calibration_images",
    "check_classes",
    "conv_norms",
    "export_onnx",
    "fast_dfl",
    "finetune",
    "group_modules",
    "load_model",
    "make_prunable",
    "model_layout",
    "modules_from_first",
    "never_pruned",
    "postprocessing",
    "quiet",
    "run_dir",
    "save_checkpoint",
    "validate_onnx",
]

logger = logging.getLogger(__name__)

_ULTRALYTICS_SET_UP = False
#: What ``export_onnx`` writes. A study records it, so a resumed study never mixes trials measured
#: on two different exports of the same plan.
EXPORT_FORMAT = "onnx-opset17-fastdfl"


def _setup() -> None:
    """Turn off Ultralytics' integrations and point its folders into yolotune's scratch dir."""
    global _ULTRALYTICS_SET_UP
    if _ULTRALYTICS_SET_UP:
        return
    from ultralytics.utils import LOGGER, SETTINGS

    scratch = workspace_dir()
    updates: dict[str, Any] = {
        key: False for key in ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")
    }
    updates.update(
        datasets_dir=str(scratch / "datasets"),
        weights_dir=str(scratch / "weights"),
        runs_dir=str(scratch / "runs"),
        vscode_msg=False,
        openvino_msg=False,
    )
    if any(SETTINGS.get(k) != v for k, v in updates.items()):
        if SETTINGS.file_path.resolve().is_relative_to(scratch.resolve()):
            SETTINGS.update(updates)  # yolotune's private settings file (configure_ultralytics ran first)
        else:  # Ultralytics was imported before yolotune, with the user's own file: change this process only
            with SETTINGS.lock:
                dict.update(SETTINGS, updates)
    LOGGER.setLevel(logging.WARNING)
    _ULTRALYTICS_SET_UP = True


class _Muted:
    """A process stream that drops what threads inside ``quiet`` write and passes on everyone else's."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def write(self, text: str) -> int:
        if threading.get_ident() in _quiet_threads:
            return len(text)
        result: int = self.real.write(text)
        return result

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _QuietThreads(logging.Filter):
    """Drops Ultralytics' log records below ERROR from threads inside ``quiet``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.thread not in _quiet_threads


_quiet_lock = threading.Lock()
_quiet_threads: dict[int | None, int] = {}  # thread ident -> depth of nested ``quiet`` blocks
_QUIET_FILTER = _QuietThreads()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Ultralytics' console output (logger and stray prints) inside the block, in this thread only.

    The process's ``sys.stdout``/``sys.stderr`` are wrapped while any thread is inside a block, and
    writes from other threads pass through: a search run in a background thread does not swallow
    what the rest of the program prints, and nested or concurrent blocks restore the streams once.
    """
    _setup()
    from ultralytics.utils import LOGGER

    me = threading.get_ident()
    with _quiet_lock:
        if not _quiet_threads:
            sys.stdout, sys.stderr = _Muted(sys.stdout), _Muted(sys.stderr)  # type: ignore[assignment]
            for where in (LOGGER, *LOGGER.handlers):
                if _QUIET_FILTER not in where.filters:
                    where.addFilter(_QUIET_FILTER)
        _quiet_threads[me] = _quiet_threads.get(me, 0) + 1
    try:
        yield
    finally:
        with _quiet_lock:
            depth = _quiet_threads.pop(me) - 1
            if depth:
                _quiet_threads[me] = depth
            if not _quiet_threads:  # the last block out unwraps (unless someone replaced the streams since)
                if isinstance(sys.stdout, _Muted):
                    sys.stdout = sys.stdout.real
                if isinstance(sys.stderr, _Muted):
                    sys.stderr = sys.stderr.real


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Ultralytics opens its messages with a level and an emoji ("ERROR ❌️ "): ours say that already
    text = re.sub(r"^(?:ERROR|WARNING)\s*[^\w\s/.'\"]*\s*", "", text)
    return text.splitlines()[0][:limit]


def _brief(exc: BaseException, path: Path, width: int = 150) -> str:
    """``_first_line(exc)`` with ``path`` said as "the file" (the message names it), cut short.

    Cut to its first sentence when that fits in ``width``, else after the last whole word that does.
    """
    text = _first_line(exc, limit=max(300, len(str(exc)))).replace(str(path), "the file")
    if len(text) <= width:
        return text
    sentence = re.match(r"(.+?[.!?])(?:\s|$)", text)
    if sentence and len(sentence.group(1)) <= width:
        return sentence.group(1)
    cut = text.rfind(" ", 0, width)
    return (text[:cut] if cut > 0 else text[:width]) + " …"


# --------------------------------------------------------------------------- loading
def _data_yaml(path: Path) -> bool:
    """Whether ``path`` reads as an Ultralytics data yaml (``train``/``val`` and ``names``/``nc``), not a model's."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and bool({"train", "val"} & data.keys()) and bool({"names", "nc"} & data.keys())


def load_model(path: str | Path) -> UltraModule:
    """Load a trained detector from a ``.pt`` checkpoint (pruned ones included).

    A model ``.yaml`` is refused: Ultralytics builds it with random weights, and compressing an
    untrained detector measures nothing (every plan scores mAP 0).

    Returns:
        The ``DetectionModel`` in fp32, eval mode, on the CPU, with gradients enabled.

    Raises:
        YolotuneError: The file is missing, unreadable, a model ``.yaml``, or not an Ultralytics detector.
    """
    _setup()
    path = Path(path)
    if not path.is_file():
        raise YolotuneError(f"model file not found: {path}")
    if path.suffix in {".yaml", ".yml"} and _data_yaml(path):
        raise YolotuneError(f"model {path} is a data yaml (train/val/names), not a model: pass it as --data")
    if path.suffix in {".yaml", ".yml"}:
        raise YolotuneError(
            f"model {path} is an architecture without trained weights: pass the trained detector's .pt "
            "checkpoint (Ultralytics saves it as runs/detect/<name>/weights/best.pt)"
        )
    if path.suffix != ".pt":
        hint = f" (rename it to {path.stem}.pt if it is one)" if path.suffix.lower() in (".pt", ".pth") else ""
        raise YolotuneError(f"model must be an Ultralytics .pt checkpoint; got {path}{hint}")
    try:
        with quiet():
            from ultralytics.nn.tasks import load_checkpoint

            model, _ = load_checkpoint(str(path), device="cpu")
    except Exception as exc:
        text = str(exc)
        if "not a loadable checkpoint" in text:  # Ultralytics' words for what torch.load could not read
            why = "the file is empty, truncated or corrupted: PyTorch cannot read it"
        elif "references types outside" in text:  # Ultralytics' words for a pickle of other classes
            why = "the file holds no Ultralytics model (a state dict, or another library's objects)"
        else:
            why = f"{type(exc).__name__}: {_brief(exc, path)}"
        raise YolotuneError(
            f"cannot load {path} as an Ultralytics YOLO detector: {why}; "
            "pass a checkpoint saved by Ultralytics (runs/detect/<name>/weights/best.pt)"
        ) from exc
    from ultralytics.nn.tasks import DetectionModel

    if not isinstance(model, DetectionModel) or type(model).__name__ != "DetectionModel":
        kind = type(model).__name__
        if not kind.endswith("Model"):  # e.g. a Sequential: a module saved with torch.save, not by Ultralytics
            raise YolotuneError(
                f"{path} holds a {kind}, not an Ultralytics checkpoint: save the model with Ultralytics "
                "(YOLO(...).save('model.pt'), or the trainer's runs/detect/<name>/weights/best.pt)"
            )
        article = "an" if kind[0] in "AEIOU" else "a"
        raise YolotuneError(
            f"{path} is {article} {kind}, not an Ultralytics detection model: yolotune tunes detectors "
            "(task=detect); pass a YOLO detection checkpoint"
        )
    model = model.float().eval().cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_checkpoint(model: UltraModule, path: str | Path, *, note: str = "") -> Path:
    """Save ``model`` as an Ultralytics checkpoint that ``YOLO(path)`` and ``load_model`` reload.

    The module objects are pickled whole (pruned widths included); every class they use lives
    in Ultralytics or in this module, so a fresh process needs nothing but ``import yolotune``.
    """
    import copy
    from datetime import datetime, timezone

    from ultralytics import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": copy.deepcopy(model).float().eval(),
        "train_args": model.args if isinstance(getattr(model, "args", None), dict) else {},
        "date": datetime.now(timezone.utc).isoformat(),
        "version": __version__,
        "yolotune": note,
    }
    with whole_file(path) as partial:
        torch.save(ckpt, partial)
    return path


# --------------------------------------------------------------------------- surgery
class C2fSplitFree(nn.Module):
    """``C2f`` / ``C3k2`` without the channel split: the same function, prunable.

    The original's ``cv1`` produces ``2c`` channels and ``chunk`` splits them; here ``cv0`` and
    ``cv1`` each produce ``c`` channels from the same input. Weights are copied, so outputs equal
    the original's up to float rounding.
    """

    def __init__(self, block: UltraModule) -> None:
        from ultralytics.nn.modules import Conv

        super().__init__()
        src = block.cv1
        c_out = src.conv.out_channels // 2
        halves = []
        for half in range(2):
            conv = Conv(src.conv.in_channels, c_out, k=src.conv.kernel_size, s=src.conv.stride)
            sl = slice(half * c_out, (half + 1) * c_out)
            conv.conv.weight.data.copy_(src.conv.weight.data[sl])
            if src.conv.bias is not None:  # pragma: no cover - Ultralytics convs have no bias
                conv.conv.bias = nn.Parameter(src.conv.bias.data[sl].clone())
            bn, sbn = conv.bn, src.bn
            bn.weight.data.copy_(sbn.weight.data[sl])
            bn.bias.data.copy_(sbn.bias.data[sl])
            bn.running_mean.data.copy_(sbn.running_mean.data[sl])
            bn.running_var.data.copy_(sbn.running_var.data[sl])
            bn.eps, bn.momentum = sbn.eps, sbn.momentum
            conv.act = src.act
            halves.append(conv)
        self.cv0, self.cv1 = halves
        self.cv2 = block.cv2
        self.m = block.m
        for attr in ("f", "i", "type", "np"):  # Ultralytics' graph bookkeeping
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))
        self.train(block.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block: both halves, the bottleneck chain on the second, then ``cv2``."""
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        out: torch.Tensor = self.cv2(torch.cat(y, 1))
        return out


def make_prunable(model: UltraModule) -> int:
    """Replace every ``C2f`` / ``C3k2`` layer of ``model`` by ``C2fSplitFree`` in place.

    Returns:
        The number of blocks replaced.
    """
    from ultralytics.nn.modules.block import C2f

    count = 0
    layers = model.model
    for idx, layer in enumerate(layers):
        if isinstance(layer, C2f):
            layers[idx] = C2fSplitFree(layer)
            count += 1
    return count


def _dfl_class() -> type[nn.Module]:
    _setup()
    from ultralytics.nn.modules.block import DFL

    return DFL  # type: ignore[no-any-return]


class FastDFL(nn.Module):
    """Ultralytics' ``DFL`` without the transpose before its softmax (same weights, same outputs).

    DFL turns each box side's 16-bin distribution into an expected distance; ONNX Runtime's CPU
    softmax over a transposed axis is what made it slow.
    """

    def __init__(self, dfl: UltraModule) -> None:
        super().__init__()
        self.c1 = int(dfl.c1)
        self.conv = dfl.conv  # the fixed 0..c1-1 integral weights, kept where Ultralytics has them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode (B, 4 * c1, A) distributions into (B, 4, A) expected distances."""
        b, _, a = x.shape
        bins = self.conv.weight.view(1, 1, 1, self.c1)
        out: torch.Tensor = (bins @ x.view(b, 4, self.c1, a).softmax(2)).view(b, 4, a)
        return out


def fast_dfl(model: UltraModule) -> bool:
    """Replace the Detect head's ``DFL`` of ``model`` by ``FastDFL`` in place.

    Returns:
        True when a ``DFL`` was replaced (heads without one, ``reg_max=1``, are left alone).
    """
    head = _detect(model)
    if type(getattr(head, "dfl", None)) is not _dfl_class():
        return False
    head.dfl = FastDFL(head.dfl)
    return True


# --------------------------------------------------------------------------- naming
@dataclass(frozen=True, kw_only=True)
class ModelLayout:
    """Human-readable layer groups of a detector and where its Detect head sits.

    Attributes:
        groups: Prunable / quantizable group names in model order (``backbone.4``, ``neck.15``,
            ``head.cv2.0``, ...). ``head.decode`` (DFL, decode, final concat) is quantization-only.
        detect_index: Index of the Detect layer in ``model.model``.
        backbone_layers: Number of layers in the backbone section of the model's yaml.
    """

    groups: tuple[str, ...]
    detect_index: int
    backbone_layers: int

    def group_of_layer(self, index: int, sub: str = "") -> str | None:
        """Return the group of layer ``index`` (``sub``: path inside the Detect layer)."""
        if index == self.detect_index:
            match = re.match(r"(cv[23])\.(\d+)", sub)
            return f"head.{match.group(1)}.{match.group(2)}" if match else "head.decode"
        section = "backbone" if index < self.backbone_layers else "neck"
        name = f"{section}.{index}"
        return name if name in self.groups else None

    def group_of_onnx_node(self, node_name: str) -> str:
        """Map an exported ONNX node name (``/model.4/cv1/conv/Conv``) to its layer group.

        Nodes outside any layer (input casts, the final output) belong to ``head.decode``.
        """
        match = re.match(r"/?model\.(\d+)(?:/(.*))?", node_name)
        if not match:
            return "head.decode"
        group = self.group_of_layer(int(match.group(1)), match.group(2) or "")
        return group or f"layer.{match.group(1)}"


def _detect(model: UltraModule) -> UltraModule:
    from ultralytics.nn.modules.head import Detect

    head = model.model[-1]
    if not isinstance(head, Detect):
        raise YolotuneError(f"model's last layer is {type(head).__name__}, not a Detect head")
    return head


def _has_attention(module: UltraModule) -> bool:
    from ultralytics.nn.modules.block import Attention

    return any(isinstance(m, Attention) for m in module.modules())


def group_modules(model: UltraModule) -> dict[str, nn.Module]:
    """Return the prunable layer groups of ``model`` by name, in model order.

    Layers without convolutions (Upsample, Concat) and blocks with attention (their head
    structure is not pruned) are not groups. Each Detect branch ``cv2.k`` / ``cv3.k`` is a
    group whose last 1x1 output convolution is never pruned.
    """
    yaml_cfg = getattr(model, "yaml", None) or {}
    backbone = len(yaml_cfg.get("backbone", [])) or len(model.model) - 1
    detect = _detect(model)
    groups: dict[str, nn.Module] = {}
    for idx, layer in enumerate(model.model[:-1]):
        if not any(isinstance(m, nn.Conv2d) for m in layer.modules()) or _has_attention(layer):
            continue
        groups[f"{'backbone' if idx < backbone else 'neck'}.{idx}"] = layer
    for branch in ("cv2", "cv3"):
        for k, seq in enumerate(getattr(detect, branch)):
            groups[f"head.{branch}.{k}"] = seq
    return groups


def layer_reads(model: UltraModule) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """The model's layers in the order its forward pass runs them, each with the layers it reads.

    Ultralytics' ``model.model`` runs each layer once, on the outputs of the layers its ``f``
    names (negative: counted back from the layer, as its ``parse_model`` does; the first layer
    reads the image, no layer).
    """
    layers = []
    for i, layer in enumerate(model.model):
        sources = layer.f if isinstance(layer.f, list | tuple) else [layer.f]
        layers.append((layer, tuple(j % i for j in sources) if i else ()))
    return layers


def modules_from_first(model: UltraModule, groups: Iterable[str]) -> list[nn.Module]:
    """Every module from the first of ``groups``' layers on, in model order.

    When those groups are pruned, only these modules can see different inputs: everything
    before the first pruned layer computes exactly what it did.
    """
    detect_index = len(model.model) - 1
    first = min((detect_index if g.startswith("head.") else int(g.split(".")[1]) for g in groups), default=0)
    return [m for layer in model.model[first:] for m in layer.modules()]


def activation_statistics(model: UltraModule, images: Iterable[np.ndarray]) -> dict[nn.Module, torch.Tensor]:
    """Mean absolute output of every channel of every ``Conv`` block (conv → BN → SiLU) on ``images``.

    Keyed by the block's BatchNorm, whose channels are the block's output channels. Runs the model
    in eval mode without gradients (unlabelled images, no training).
    """
    _setup()
    from ultralytics.nn.modules.conv import Conv

    sums: dict[nn.Module, torch.Tensor] = {}
    counts: dict[nn.Module, int] = {}

    def hook(module: Any, _inputs: Any, output: torch.Tensor) -> None:
        bn: nn.Module = module.bn
        sums[bn] = sums.get(bn, 0) + output.detach().abs().mean(dim=(0, 2, 3))
        counts[bn] = counts.get(bn, 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Conv) and hasattr(m, "bn")]
    model.eval()
    try:
        with torch.no_grad():
            for img in images:
                model(torch.from_numpy(img))
    finally:
        for h in handles:
            h.remove()
    return {bn: total / counts[bn] for bn, total in sums.items()}


def conv_norms(model: UltraModule) -> dict[nn.Module, nn.BatchNorm2d]:
    """The BatchNorm right after each ``Conv`` block's convolution (conv → BN → act), by convolution.

    Convolutions missing here (Detect's output convolutions, DFL) carry their own bias.
    """
    _setup()
    from ultralytics.nn.modules.conv import Conv

    return {
        m.conv: m.bn
        for m in model.modules()
        if isinstance(m, Conv) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)
    }


def check_classes(model: UltraModule, names: dict[int, str], source: Path) -> None:
    """Refuse a dataset whose classes are not the detector's (Ultralytics would drop every label).

    Raises:
        YolotuneError: The class counts differ.
    """
    detects = int(model.model[-1].nc)
    args = getattr(model, "args", None)
    if len(names) != detects and detects == 1 and isinstance(args, dict) and args.get("single_cls"):
        raise YolotuneError(
            f"the model was trained with single_cls=True (every class of {source} as one) and yolotune validates "
            "per class: give it a data yaml naming one class, with every label line's class set to 0"
        )
    if len(names) != detects:
        raise YolotuneError(
            f"data yaml {source} names {len(names)} class(es); the model detects {detects}: "
            "pass the dataset the model was trained on (its data yaml's names)"
        )
    own = getattr(model, "names", None)
    if isinstance(own, dict) and len(own) == detects:
        # Ultralytics' names for a data yaml that gives only nc (class_0, ...) are no names to compare
        differ = [i for i in sorted(names) if str(own.get(i)) != str(names[i]) and names[i] != f"class_{i}"]
        if differ:  # the same count of classes under other names: relabelled data, or another model's yaml
            i = differ[0]
            warn_once(
                logger,
                "data yaml %s names %d of the model's %d classes otherwise (class %d: %r, the model's %r): the mAP "
                "counts a box of one as the other; pass the data yaml the model was trained with",
                source,
                len(differ),
                detects,
                i,
                names[i],
                own.get(i),
            )


def model_layout(model: UltraModule) -> ModelLayout:
    """Return the ``ModelLayout`` (group names, Detect position) of ``model``."""
    yaml_cfg = getattr(model, "yaml", None) or {}
    backbone = len(yaml_cfg.get("backbone", [])) or len(model.model) - 1
    return ModelLayout(
        groups=tuple(group_modules(model)),
        detect_index=len(model.model) - 1,
        backbone_layers=backbone,
    )


def never_pruned(model: UltraModule) -> list[nn.Module]:
    """Modules whose output channels must never be pruned.

    The Detect head's last 1x1 convolutions (box distribution and class outputs), its DFL, any
    end-to-end one-to-one branches, and blocks with attention.
    """
    detect = _detect(model)
    ignored: list[nn.Module] = [detect.dfl]
    for branch in ("cv2", "cv3"):
        for seq in getattr(detect, branch):
            ignored.append(seq[-1])
    for branch in ("one2one_cv2", "one2one_cv3"):
        if getattr(detect, branch, None) is not None:
            ignored.append(getattr(detect, branch))
    ignored += [layer for layer in model.model[:-1] if _has_attention(layer)]
    return ignored


# --------------------------------------------------------------------------- fine-tuning
def _train_yaml(dataset: Dataset) -> Path:
    """A data yaml whose ``val`` is the training split: training never loads validation images."""
    import yaml

    spec = yaml.safe_load(dataset.yaml_path.read_text())
    spec["val"] = spec["train"]
    path = dataset.yaml_path.with_name("train_only.yaml")
    if not path.exists():  # whole: two workers fine-tuning at once may both write it
        with whole_file(path) as partial:
            partial.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass(frozen=True, kw_only=True)
class FinetuneReport:
    """What a fine-tuning ran (``metrics.json``'s ``finetune``).

    Attributes:
        epochs: Epochs over the training split.
        images: Training images (the labelled ones train; validation images never do).
        batch: Batch size, and Ultralytics' ``nbs`` (one optimizer step per batch).
        lr: AdamW's learning rate, constant (no warm-up).
        mosaic: Whether Ultralytics' mosaic augmentation was on (off for 5 epochs or fewer).
        device: Where it trained (Ultralytics' device string).
        teacher: The checkpoint it distilled from (Ultralytics' ``DistillationModel`` wrapped the
            student), or ``None``.
    """

    epochs: int
    images: int
    batch: int
    lr: float
    mosaic: bool
    device: str
    teacher: str | None


def finetune(
    checkpoint: Path,
    dataset: Dataset,
    *,
    epochs: int,
    lr: float,
    imgsz: int,
    out_dir: Path,
    batch: int = 16,
    seed: int = 0,
    device: str = "cpu",
    teacher: Path | None = None,
    distill_weight: float = 6.0,
) -> tuple[UltraModule, FinetuneReport]:
    """Fine-tune the (pruned) model in ``checkpoint`` itself on the training split.

    Ultralytics' trainer rebuilds a model from its yaml, which would undo pruning; a trainer
    subclass hands it the checkpoint's own modules instead. Settings suit 1–5 epoch recovery:
    AdamW at ``lr`` with no warm-up, ``nbs`` equal to the batch (one optimizer step per batch),
    no mosaic for runs of five epochs or fewer, and no validation (model selection never sees
    validation images).

    ``device`` is Ultralytics' device string (``cpu``, ``0``, ``cuda:0``). With ``teacher`` (a
    checkpoint, the unpruned model) the trainer distils from it (``distill_model``, loss weight
    ``dis`` = ``distill_weight``): Ultralytics wraps the pruned student in its
    ``DistillationModel``, which projects the student's features to the teacher's widths; only the
    student comes back.

    Returns:
        The fine-tuned model (EMA weights), fp32, eval mode, on the CPU, and what ran.
    """
    _setup()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class _PrunedTrainer(DetectionTrainer):  # type: ignore[misc]
        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> Any:
            if weights is None:
                raise StepError("finetune", "the pruned checkpoint did not load")
            return weights

        def validate(self) -> tuple[dict[str, float], None]:
            return {}, None

        def final_eval(self) -> None:
            return None

    batch = max(1, min(batch, len(dataset.train_images)))
    overrides = {
        "model": str(checkpoint),
        "data": str(_train_yaml(dataset)),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "nbs": batch,
        "optimizer": "AdamW",
        "lr0": lr,
        "lrf": 1.0,
        "warmup_epochs": 0,
        "mosaic": 0.0 if epochs <= 5 else 1.0,
        "close_mosaic": 0,
        "device": device,
        "workers": 0,
        "amp": False,
        "plots": False,
        "val": False,
        "seed": seed,
        "deterministic": True,
        "project": str(Path(out_dir).absolute()),  # a relative one, Ultralytics would put under its runs_dir
        "name": "finetune",
        "exist_ok": True,
        "verbose": False,
        "cache": False,
    }
    if teacher is not None:
        overrides.update(distill_model=str(teacher), dis=distill_weight)
    try:
        with quiet():
            trainer = _PrunedTrainer(overrides=overrides)
            trainer.train()
    except StepError:
        raise
    except Exception as exc:
        raise StepError("finetune", _first_line(exc)) from exc
    from ultralytics.nn.distill_model import DistillationModel

    model = trainer.ema.ema if trainer.ema is not None else trainer.model
    # the model comes from memory; the trainer's best.pt and last.pt (equal here, since it does not
    # validate) would add twice the checkpoint's size to every fine-tuned trial
    shutil.rmtree(Path(trainer.save_dir) / "weights", ignore_errors=True)
    if isinstance(model, DistillationModel):
        model = model.student_model
    elif teacher is not None:
        raise StepError("finetune", "Ultralytics' trainer did not distil (no DistillationModel came back)")
    model = model.float().eval().cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        raise StepError("finetune", "weights became NaN/inf; lower the learning rate")
    report = FinetuneReport(
        epochs=epochs,
        images=len(trainer.train_loader.dataset),
        batch=batch,
        lr=lr,
        mosaic=bool(overrides["mosaic"]),
        device=device,
        teacher=None if teacher is None else str(teacher),
    )
    return model, report


# --------------------------------------------------------------------------- export
def export_onnx(checkpoint: Path, *, imgsz: int, opset: int = 17) -> Path:
    """Export a checkpoint to ONNX (static 1x3ximgszximgsz, opset 17, simplified by onnxslim).

    The file lands next to the checkpoint with the ``.onnx`` suffix and carries Ultralytics'
    metadata (class names, stride, image size), so its validator and predictor read it directly.
    The head's DFL is exported as ``FastDFL`` (see the module docstring).
    """
    _setup()
    from ultralytics import YOLO

    try:
        with quiet():
            yolo = YOLO(str(checkpoint), task="detect")
            fast_dfl(yolo.model)
            out = yolo.export(
                format="onnx",
                imgsz=imgsz,
                opset=opset,
                simplify=True,
                dynamic=False,
                half=False,
                batch=1,
                device="cpu",
                nms=False,
            )
    except Exception as exc:
        raise StepError("export", _first_line(exc)) from exc
    if not out or not Path(out).is_file():
        raise StepError("export", f"Ultralytics wrote no ONNX file for {checkpoint}")
    return Path(out)


# --------------------------------------------------------------------------- data
def calibration_images(dataset: Dataset, *, imgsz: int, count: int) -> Iterator[np.ndarray]:
    """Yield ``count`` training images as 1x3xHxW float32 arrays.

    They are preprocessed exactly as Ultralytics' validator feeds an ONNX model (resize the long
    side, letterbox to a square with gray 114, BGR→RGB, /255). Uses Ultralytics' own dataset
    class, on the training split only.
    """
    _setup()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    with quiet():
        data = check_det_dataset(str(dataset.yaml_path))
        cfg = get_cfg(overrides={"imgsz": imgsz, "rect": False, "task": "detect", "cache": False})
        ds = build_yolo_dataset(cfg, data["train"], 1, data, mode="val", rect=False, stride=32)
    n = min(count, len(ds))
    for i in range(n):
        img = ds[i]["img"]  # CHW uint8 RGB tensor, letterboxed
        yield (img.numpy().astype(np.float32) / 255.0)[None]


def validate_onnx(onnx_path: Path, dataset: Dataset, *, imgsz: int) -> tuple[float, float]:
    """Validate an ONNX file with Ultralytics' validator on the val split (CPU).

    Returns:
        (mAP50-95, mAP50).
    """
    _setup()
    from ultralytics import YOLO

    try:
        with quiet():
            model = YOLO(str(onnx_path), task="detect")
            metrics = model.val(
                data=str(dataset.yaml_path),
                imgsz=imgsz,
                batch=1,
                device="cpu",
                plots=False,
                workers=0,
                verbose=False,
                save_json=False,
                project=str(workspace_dir() / "runs"),
                name="val",
                exist_ok=True,
            )
    except Exception as exc:
        raise StepError("validate", _first_line(exc)) from exc
    finally:
        # free the ONNX Runtime session now: idle sessions spin threads and disturb timings
        model = None  # type: ignore[assignment]
        import gc

        gc.collect()
    box = metrics.box
    m, m50 = float(box.map), float(box.map50)
    if not (np.isfinite(m) and np.isfinite(m50)):
        raise StepError("validate", "mAP is not a finite number")
    return m, m50


def postprocessing() -> dict[str, Any]:
    """How Ultralytics turns a detection model's outputs into boxes, as ``validate_onnx`` measured mAP.

    For a deployment recipe: NMS settings from Ultralytics' default configuration, and the
    confidence thresholds its validator and predictor use when none is given.
    """
    _setup()
    from ultralytics.cfg import get_cfg

    cfg = get_cfg()
    return {
        "nms": "class-agnostic" if cfg.agnostic_nms else "per class",
        "iou": float(cfg.iou),
        "max_detections": int(cfg.max_det),
        "confidence_validated": 0.001,  # the validator's when conf is unset: the mAP here was measured so
        "confidence_predict": 0.25,  # the predictor's when conf is unset
    }


def run_dir(path: str | Path) -> Path:
    """``path``, or the first of ``path2``, ``path3``, ... not taken, as Ultralytics names runs (``increment_path``)."""
    _setup()
    from ultralytics.utils.files import increment_path

    return Path(increment_path(Path(path), exist_ok=False, sep="", mkdir=True))  # taken now, not a minute later
