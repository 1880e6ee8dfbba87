"""The data a classifier learns from: ``datamodule`` (CIFAR10DataModule: split, subsets, batching, augmentation
after transfer), ``augment``, ``sources`` (CIFAR-10's pickles, archives, image folders, the decode cache),
``loaders``, ``stream`` (LitData chunks written by ``cifarlit prepare``) and ``explore`` (what ``explore`` prints)."""
