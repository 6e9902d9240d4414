"""Hugging Face Hub integration for PSPNet: ``save_pretrained``, ``from_pretrained``, ``push_to_hub`` and the model card.

``PSPNetHubMixin`` is a base class of ``PSPNet``; it stores weights as safetensors with the model
config in their metadata, so a single file rebuilds the model, and loads any supported weights file
(ours, hszhao/semseg, mmsegmentation) by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from pspnet.errors import PSPNetError
from pspnet.model.serialization import WEIGHTS_NAME, load_safetensors, load_weights_file, save_safetensors


# what a training run folder (`pspnet train --out-dir RUN`) holds, best first
RUN_WEIGHTS = ("best.safetensors", "last.safetensors")


def run_weights(folder: Path) -> Path:
    """The weights of a model folder that is a training run: its best.safetensors, else last.safetensors."""
    for name in RUN_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise PSPNetError(f"{folder}: directory has no {WEIGHTS_NAME} (a saved model) and no {' or '.join(RUN_WEIGHTS)} "
                      "(a training run; a run writes best.safetensors at its first evaluation)")


class PSPNetHubMixin(PyTorchModelHubMixin):
    """The Hub and file persistence of ``PSPNet`` (``self.config`` holds every constructor argument)."""

    config: dict[str, Any]

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``model.safetensors`` (config in its metadata), ``config.json`` and a model card to a directory."""
        kwargs["config"] = kwargs.get("config") or self.config  # push_to_hub passes config=None explicitly
        super().save_pretrained(save_directory, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
        """A README.md that says what the weights expect (preprocessing, classes) and how to load them.

        ``model_card_kwargs`` may give ``repo_id``, ``source`` (a line on where the weights come from)
        and ``license``.
        """
        c = self.config
        repo = kwargs.get("repo_id") or "ORG/NAME"
        backbone = c["backbone"]
        if backbone.startswith("resnet"):
            backbone += f" (deep stem {c['stem_widths']}{', contracted dilation' if c['contract_dilation'] else ''})"
        card_data = ModelCardData(library_name="pspnet", pipeline_tag="image-segmentation", license=kwargs.get("license"),
                                  tags=["semantic-segmentation", "pspnet", c["backbone"]])
        text = "\n".join([
            "---", card_data.to_yaml(), "---", "",
            f"# PSPNet ({c['backbone']}, {c['num_classes']} classes)", "",
            "Pyramid Scene Parsing Network (Zhao et al., CVPR 2017) for semantic segmentation, saved by the "
            "`pspnet` library.", "",
            *([kwargs["source"], ""] if kwargs.get("source") else []),
            "| setting | value |", "| --- | --- |",
            f"| backbone | {backbone}, output stride {c['output_stride']} |",
            f"| pyramid bins | {c['bins']} |", f"| align_corners | {c['align_corners']} |",
            *([f"| decoder | skip decoder at stride 4, {c['decoder_channels']} channels (not in the paper) |"]
              if c["decoder_channels"] else []),
            f"| input | RGB scaled to 0..1, then normalised with mean {c['mean']} and std {c['std']} |", "",
            "## Classes", "", ", ".join(f"`{n}`" for n in c["class_names"]), "",
            "## Use", "", "```python", "import pspnet", "",
            f'model = pspnet.PSPNet.from_pretrained("{repo}")  # or a local folder',
            'labels = pspnet.Segmenter(model)("street.jpg")  # (H, W) class indices, preprocessing as above',
            "logits = model(images)  # (N, 3, H, W) normalised as above -> (N, classes, H, W)",
            "```", "", f"or `pspnet predict --model {repo} street.jpg`. The weights are safetensors with the config "
            "in their metadata: loading them runs no code from the file.", "",
        ])
        return ModelCard(text)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:  # type: ignore[override]
        """Upload weights, config and model card to the Hub repo ``repo_id`` (created if missing)."""
        kwargs["model_card_kwargs"] = {"repo_id": repo_id, **(kwargs.get("model_card_kwargs") or {})}
        return super().push_to_hub(repo_id, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_safetensors(self, save_directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> "PSPNetHubMixin":  # type: ignore[override]
        """Load from a directory, a .safetensors file, a checkpoint (.pth: ours, semseg or mmseg) or a Hub id."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
            path = run_weights(path)
        if path.is_file():
            return load_weights_file(path, cls, **kwargs)
        if not path.exists() and (str(pretrained_model_name_or_path).count("/") != 1 or path.suffix):
            raise PSPNetError(f"{path}: no such file, directory or Hub id (Hub ids look like 'org/name')")
        try:
            return super().from_pretrained(str(pretrained_model_name_or_path), **kwargs)
        except (EntryNotFoundError, HfHubHTTPError, ConnectionError) as err:  # no network, no repo, no file
            raise PSPNetError(f"{pretrained_model_name_or_path}: could not get {WEIGHTS_NAME} from the Hugging Face "
                              f"Hub ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from err

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: Any = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         map_location: str = "cpu", strict: bool = True, **config: Any) -> "PSPNetHubMixin":
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_NAME
        else:
            weights = Path(hf_hub_download(model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, token=token,
                                           local_files_only=local_files_only))
        return load_safetensors(weights, cls, map_location=map_location, **config)
