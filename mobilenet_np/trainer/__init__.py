"""Training as an application: datasets and augmentation (`data`), the training loop with its checkpoints,
logs and curves (`loop`), behind `mobilenet-np train`. It stands above the networks; the training
arithmetic it uses (backward passes, losses, optimizers) is in mobilenet_np/training/.
"""
