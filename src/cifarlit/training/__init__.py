"""The loop around the LightningModule: ``trainer`` (CifarTrainer: device policy, explore, predict),
``callbacks`` (the debug ladder, the run record, the per-class report), ``runs`` (run folders, ``--ckpt_path``
keywords) and ``predict`` (the predictions CSV)."""
