"""The federated-learning core: plain PyTorch, no Django.

Submodules are imported explicitly (``from fl import networks``) so that importing
the package itself stays cheap; a test enforces that nothing here imports Django.

- ``params``: parameter schemas and their validation, shared by every registry.
- ``networks``: the model registry (``build_model``).
- ``serialization``: safetensors in and out, and validation of uploaded updates.
- ``strategies``: aggregation strategies (``get_strategy("fedavg")``), some with
  server state carried between rounds (``next_server_state``).
- ``data``: local datasets, demo datasets and their partitioning into sites.
- ``training``: optimizers, local training and evaluation.
- ``metrics``: exact evaluation metrics (AUROC).
- ``catalog``: every model, strategy and optimizer with its schema, as JSON.
- ``examples``: an example user model factory for ``FLPORTAL_MODELS``.
"""
