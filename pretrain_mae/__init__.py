"""Stage 1: masked-autoencoder pretraining of the face ViT on the mixed face shards."""
