"""weightlift as an SGLang loader: SGLang's `get_model_loader` instantiates
a class passed as `load_format`::

    import sglang as sgl
    from weightlift.integrations.sglang import WeightliftModelLoader

    engine = sgl.Engine(model_path="path/to/model", load_format=WeightliftModelLoader)

`WeightliftModelLoader` is SGLang's `DefaultModelLoader` with its weights
iterator replaced: the model directory's safetensors files (those its
index names, else every `*.safetensors`) loaded by weightlift onto the
device the model's parameters are on, each tensor owning its memory, in
completion order; with tensor parallelism the tensor-parallel group reads
each byte once. Options come from `model_loader_extra_config` (a JSON
object; see `LoaderOptions`), as for vLLM. The class is made on first
access, which imports SGLang.
"""

from typing import Any, Iterator, Optional, Tuple

from ._weights import Bar, LoaderOptions, checkpoint_files, device_of, first_rank, tp_group, weights

_CLASS: Optional[type] = None


def loader_class() -> type:
    """`WeightliftModelLoader` (needs SGLang)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import dataclasses
    import os

    from sglang.srt.model_loader.loader import DefaultModelLoader

    class WeightliftModelLoader(DefaultModelLoader):
        """Loads safetensors checkpoints with weightlift."""

        def __init__(self, load_config: Any) -> None:
            self.options = LoaderOptions.parse(getattr(load_config, "model_loader_extra_config", None))
            # The default loader refuses extra options it does not know:
            # it sees none of weightlift's.
            super().__init__(dataclasses.replace(load_config, model_loader_extra_config={}))
            self.load_config = load_config

        def _folder(self, model_config: Any) -> str:
            path = model_config.model_path
            if os.path.isdir(path):
                return path
            from sglang.srt.model_loader.weight_utils import download_weights_from_hf

            return download_weights_from_hf(
                path,
                getattr(self.load_config, "download_dir", None),
                ["*.safetensors", "*.safetensors.index.json"],
                getattr(model_config, "revision", None),
                ignore_patterns=getattr(self.load_config, "ignore_patterns", None),
            )

        def download_model(self, model_config: Any) -> None:
            checkpoint_files(self._folder(model_config))

        def _get_all_weights(self, model_config: Any, model: Any) -> Iterator[Tuple[str, Any]]:
            files = checkpoint_files(self._folder(model_config))
            group = tp_group(self.options, "sglang.srt.distributed")
            yield from weights(files, self.options, device_of(model), self._bar, group)

        def _bar(self, total: int) -> Bar:
            show = self.options.progress
            if show is None:
                show = first_rank()
            return Bar(show, total, "Loading safetensors using weightlift")

    _CLASS = WeightliftModelLoader
    return _CLASS


def __getattr__(name: str) -> Any:
    if name == "WeightliftModelLoader":
        return loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
