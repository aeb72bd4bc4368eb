"""Memory trackers: tensor bytes (MemTracker, fake or real tensors), process RSS, CUDA allocator."""
