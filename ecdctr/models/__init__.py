"""The CTR model and its towers: MLP, AdaSparse, STAR and APG behind one tower base class."""
