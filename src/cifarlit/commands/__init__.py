"""The commands beside LightningCLI's own: ``prepare`` (a stream of LitData chunks), ``compare`` (runs side by
side), ``tune`` (an Optuna study), ``export`` (ONNX, TorchScript, safetensors) and ``serve`` (HTTP, LitServe)."""
