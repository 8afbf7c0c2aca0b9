"""Data for the PSPNet trainer: list-file data sets, the seed's augmentations, a per-rank loader.

- ``synth``: generator of a small VOC-format data set (``pspnet-cluster data synth DIR``) and
  ``ensure_dataset(cfg)`` (race-free generation at ``data_root`` when the config asks for it).
- ``lists``: VOC2012-AUG / ADE20K list files, loading and checking samples (errors name LIST:LINE).
- ``transforms``: random scale, rotate, blur, flip, crop, normalise (numpy + OpenCV, seeded).
- ``loader``: ``steps_per_epoch``, ``train_batches``, ``val_batches`` with mindspore.dataset
  (the only module here that imports MindSpore).

Nothing is imported here, so ``import trainer.data.synth`` stays light.
"""
