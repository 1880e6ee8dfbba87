"""The networks and the LightningModule that trains them: ``lit_mlp`` (LitMLP: the step, metrics, optimizers),
``factories`` (the optimizer, scheduler and network the config names), ``rng`` (RNG states in checkpoints),
``nets`` (MLP, CNNs, torchvision models), ``pretrained`` (timm backbones), ``schedules``, ``transfer``
(``model.init_from``) and ``weights`` (.safetensors and weights-only PyTorch files)."""
