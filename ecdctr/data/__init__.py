"""Raw rows to tf.data: readers, row parsing and encoding, datasets, vocabularies, drift, the simulator."""
