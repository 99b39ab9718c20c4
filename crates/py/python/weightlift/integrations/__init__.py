"""weightlift where models are loaded: vLLM (`--load-format weightlift`),
SGLang (`load_format=weightlift.integrations.sglang.WeightliftModelLoader`)
and transformers (`weightlift.integrations.transformers.from_pretrained`).

Each submodule imports its framework only when used, so this package
imports without any of them.
"""
