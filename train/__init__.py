"""mkgan_engine.train: KernelGAN, ZSSR, kernel utilities, region-aware crop sampling, merging.

Every stage is a function of plain arrays/tensors plus a typed config, so library users can call
any stage alone (bring their own mask or kernel).
"""
