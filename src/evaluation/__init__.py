"""Evaluation at the images' original size: restore a model from its checkpoint alone, predict,
post-process, score (Dice, IoU, surface distances, biometry) and write the records.

Shared by ``src.eval`` and the test-after-fit path of ``src.train`` (one home)."""
