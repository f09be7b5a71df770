"""Keras layers the models are built from: feature encoding, TPM lookups and the snapshot aggregator."""
