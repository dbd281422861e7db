"""The plan search: the fastest layer-wise hybrid-parallel plan under a memory budget."""
