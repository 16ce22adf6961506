"""Protocol buffers for fedtl's own gRPC APIs (site worker, coordinator hub)."""
