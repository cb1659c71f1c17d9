"""CTR models of the pipeline: DCN over field embeddings plus an optional visual tower
(ResNet18 or a light CNN) with a pluggable attention (none, CBAM, CSCNN), and the training
loop that fits them (`models.train`, kept apart from the modules)."""
