"""Memory trackers: tensor bytes (MemTracker, fake or real tensors), process RSS, CUDA allocator, NVML.

Each registers itself in memory/registry.py; the package imports nothing heavy, so commands that only
read results never import torch.
"""
