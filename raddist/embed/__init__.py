"""The embedding pipeline (Ray Data) and the content-addressed embedding cache."""
