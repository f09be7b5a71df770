"""What TF Serving receives: SavedModel export and versions, the gate, the client."""
