"""What the model sees: the resolved pipelines in the run dir and W&B config, and
``trainkit preview-data --config R.yaml``, a PNG grid of augmented training samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only

from trainkit.data.augment import PIPELINE_SPLITS, AugmentedImages, pipeline_dict
from trainkit.data.datamodule import DataModule
from trainkit.data.samples import SourceSamples
from trainkit.errors import ConfigError

PIPELINES_FILE = "augment.yaml"
PREVIEW_FILE = "preview.png"


def augment_seed(seed_everything: Any) -> int:
    """The augmentation seed from ``seed_everything`` (``true``/``false``/``null``: 0)."""
    return seed_everything if isinstance(seed_everything, int) and not isinstance(seed_everything, bool) else 0


def pipelines_config(dm: DataModule) -> dict[str, Any]:
    """The resolved pipelines as ``A.to_dict`` dicts (``None``: no augmentation)."""
    dm.setup()
    return {s: pipeline_dict(dm.pipelines.get(s)) for s in PIPELINE_SPLITS}


@rank_zero_only
def save_pipelines(run_dir: Path, dm: DataModule) -> None:
    """Write ``augment.yaml``: the resolved train/eval pipelines, loadable with ``A.from_dict``."""
    from trainkit.rundir import atomic_write_text

    atomic_write_text(run_dir / PIPELINES_FILE, yaml.safe_dump(pipelines_config(dm), sort_keys=False))


def preview_grid(dm: DataModule, path: Path, rows: int | None = None, draws: int = 5) -> Path:
    """Save a grid: one training sample per row, un-augmented then ``draws`` augmentations.

    ``rows`` defaults to one per class (up to 32), samples taken round-robin over the
    classes, so every class shows up. The draws are those of epochs 0 to ``draws - 1``.

    Raises:
        ConfigError: the dataset is a table (nothing to look at).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    dm.setup()
    ds = dm.splits["train"]
    if not dm.data.is_image:
        raise ConfigError(f"preview-data shows images; {dm.dataset_name} is a table", "data.dataset")
    rows = rows or min(dm.num_classes, 32)
    labels = np.asarray(ds.y) if hasattr(ds, "y") else ds.tensors[1].numpy()
    picks = preview_picks(labels, dm.num_classes, rows)
    fig, axes = plt.subplots(len(picks), draws + 1, figsize=(1.4 * (draws + 1), 1.4 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        raw = _raw_image(dm, ds, i)
        augmented = hasattr(ds, "image") and dm.pipelines["train"] is not None
        images = [raw] + [_scaled(ds.image((d, i))) if augmented else raw for d in range(draws)]
        for c, img in enumerate(images):
            ax = axes[r][c]
            ax.imshow(np.clip(img.squeeze(-1) if img.shape[-1] == 1 else img, 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(dm.data.classes[int(labels[i])], fontsize=7)
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=7)
    fig.suptitle(f"{dm.dataset_name}: train pipeline", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def preview_picks(labels: np.ndarray, num_classes: int, rows: int) -> list[int]:
    """``rows`` sample indices taken round-robin over the classes (every class once before any twice).

    >>> preview_picks(np.array([0, 0, 1, 2, 2]), 3, 4)
    [0, 2, 3, 1]
    """
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    depth = max((len(m) for m in members), default=0)
    return [int(m[k]) for k in range(depth) for m in members if k < len(m)][:rows]


def _scaled(img: np.ndarray) -> np.ndarray:
    """An image in the [0, 1] scale (file sources decode to uint8)."""
    return img / 255.0 if img.dtype == np.uint8 else img


def _raw_image(dm: DataModule, ds: Any, i: int) -> np.ndarray:
    """Training sample ``i`` before augmentation, HWC in ``[0, 1]``."""
    if isinstance(ds, AugmentedImages):
        return ds.x[i].transpose(1, 2, 0) / ds.max_value
    if isinstance(ds, SourceSamples):
        img = ds.source.read(int(ds.indices[i]))
        return _scaled(img[..., None] if img.ndim == 2 else img)
    x = ds.tensors[0][i].numpy() * dm.std + dm.mean  # undo standardization
    return x.transpose(1, 2, 0) / dm.data.max_value


def run_preview(argv: list[str]) -> Path:
    """``trainkit preview-data`` as a function: the preview PNG's path (in a new run dir)."""
    from trainkit.runner import TrainkitCLI, finish_wandb

    class PreviewCLI(TrainkitCLI):
        # the fit stage's parsing, run dir and logger, but a preview instead of training
        def before_fit(self) -> None:
            if self.datamodule.kind == "streaming":  # refused before the run dir is made
                raise ConfigError("preview-data shows a recipe's own source; run it on the recipe you packed the "
                                  "shards from", "data.dataset")
            super().before_fit()

        def fit(self, model: Any, datamodule: DataModule, **kwargs: Any) -> None:
            self.preview = _write_preview(self.run_dir.path, datamodule, self.trainer.loggers)

    try:
        cli = PreviewCLI(["fit", *argv])
        return cli.preview
    finally:
        finish_wandb()


@rank_zero_only
def _write_preview(run_dir: Path, dm: DataModule, loggers: list[Any]) -> Path:
    from lightning.pytorch.loggers import WandbLogger

    path = preview_grid(dm, run_dir / PREVIEW_FILE)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="data/preview", images=[str(path)])
    return path
