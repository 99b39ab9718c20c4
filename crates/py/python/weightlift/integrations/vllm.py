"""`vllm serve MODEL --load-format weightlift`: weightlift as a vLLM load format.

vLLM finds it through the `vllm.general_plugins` entry point that the
weightlift wheel declares (`weightlift = weightlift.integrations.vllm:register`),
which it calls in every process it starts; `register()` registers
`WeightliftModelLoader` under the name "weightlift" with vLLM's
`register_model_loader`. No vLLM patch is needed.

Options come from `--model-loader-extra-config` (a JSON object; see
`LoaderOptions`): `backend`, `buffer_size`, `pinned_bytes`,
`fill_threads`, `progress`, `group`, `mmap`.

The loader reads the model directory's safetensors files (those its
`model.safetensors.index.json` names, else every `*.safetensors`;
a Hugging Face repository is downloaded first with vLLM's own helper)
onto the device the model's parameters are on, each tensor owning its
memory there, and hands them to the model's `load_weights` in completion
order. With tensor parallelism the ranks of the tensor-parallel group
load together (`process_group=`): each byte is read from storage once by
the group and every rank receives every tensor, which vLLM's weight
loaders then narrow to the rank's part.
"""

from typing import Any, Iterator, List, Optional, Tuple

from ._weights import Bar, LoaderOptions, checkpoint_files, device_of, first_rank, tp_group, weights

#: The name users pass as --load-format.
LOAD_FORMAT = "weightlift"


def register() -> None:
    """The `vllm.general_plugins` entry point: registers the loader with
    vLLM (does nothing when vLLM is not installed)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return
    loader_class()


_CLASS: Optional[type] = None


def loader_class() -> type:
    """`WeightliftModelLoader`, a vLLM `BaseModelLoader` registered as
    --load-format weightlift (made on first use: it needs vLLM)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from vllm.model_executor.model_loader import register_model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    class WeightliftModelLoader(BaseModelLoader):
        """Loads safetensors checkpoints with weightlift."""

        def __init__(self, load_config: Any) -> None:
            super().__init__(load_config)
            self.options = LoaderOptions.parse(getattr(load_config, "model_loader_extra_config", None))

        def _files(self, model_config: Any) -> List[str]:
            return checkpoint_files(_local_folder(model_config, self.load_config))

        def download_model(self, model_config: Any) -> None:
            self._files(model_config)

        def weights_iterator(self, model_config: Any, model: Any) -> Iterator[Tuple[str, Any]]:
            files = self._files(model_config)
            group = tp_group(self.options, "vllm.distributed")
            return weights(files, self.options, device_of(model), self._bar, group)

        def _bar(self, total: int) -> Bar:
            show = self.options.progress
            if show is None:
                show = bool(getattr(self.load_config, "use_tqdm_on_load", True)) and first_rank()
            try:
                from vllm.model_executor.model_loader.weight_utils import _BAR_FORMAT as fmt
            except ImportError:
                fmt = None
            return Bar(show, total, "Loading safetensors using weightlift", fmt)

        def load_weights(self, model: Any, model_config: Any) -> None:
            expected = {name for name, _ in model.named_parameters()}
            loaded = model.load_weights(self.weights_iterator(model_config, model))
            # As vLLM's default loader checks it.
            if getattr(model_config, "quantization", None) is None and loaded is not None:
                missing = expected - set(loaded)
                if missing:
                    raise ValueError(
                        f"Following weights were not initialized from checkpoint: {sorted(missing)}"
                    )

    _CLASS = register_model_loader(LOAD_FORMAT)(WeightliftModelLoader)
    return _CLASS


def _local_folder(model_config: Any, load_config: Any) -> str:
    """The model's directory: `model_config.model` when it is one, else the
    Hugging Face repository downloaded (safetensors and index only) with
    vLLM's helper."""
    import os

    model = model_config.model
    if os.path.isdir(model):
        return model
    from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf

    return download_weights_from_hf(
        model,
        getattr(load_config, "download_dir", None),
        ["*.safetensors", "*.safetensors.index.json"],
        getattr(model_config, "revision", None),
        ignore_patterns=getattr(load_config, "ignore_patterns", None),
    )


def __getattr__(name: str) -> Any:
    if name == "WeightliftModelLoader":
        return loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
