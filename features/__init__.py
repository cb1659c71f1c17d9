"""Feature layer: the feature spec (which columns are id fields, bins, multi-hot), the encoder
saved with each model, the window's Delta tables and their run metadata, and the ad-grouped
example layout the trainer reads. Imports only `core`; Spark stages and the trainer build on it."""
