"""The federated-learning core: plain PyTorch, no Django.

Submodules are imported explicitly (``from jobs.fl import networks``) so that importing
the package itself stays cheap; a test enforces that nothing here imports Django.

- ``params``: parameter schemas and their validation, shared by every registry.
- ``networks``: the model registry (``build_model``).
- ``serialization``: safetensors in and out, and validation of uploaded updates.
- ``strategies``: aggregation strategies (``get_strategy("fedavg")``).
- ``data``: local datasets, demo datasets and their partitioning into sites.
- ``training``: optimizers, local training and evaluation.
"""
