"""The async shell around the core: GPUResourcePool, its GPU monitor, backend primitives."""
