"""Manifests, readers, transforms, synthetic data and the dataset catalog."""
