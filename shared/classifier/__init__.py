"""The csPCa classifier both sides train: networks, case tensors, augmentation, training loop.

Sites pretrain it on their own cases (real or autoencoder-reconstructed) and export weights; the
coordinator pretrains it on synthetic cases and fine-tunes it on its external data.
"""
