"""``streamsgd.torch.StreamDataset``: the stream as a PyTorch ``IterableDataset`` (needs the
``[torch]`` extra). See :mod:`streamsgd.integrations.torch`."""

from .integrations.torch import StreamDataset, worker_skips

__all__ = ["StreamDataset", "worker_skips"]
