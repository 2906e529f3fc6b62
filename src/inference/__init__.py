"""A trained network applied to images: the checkpoint format and its loader (fold ensembles
included), the network run at an image's original size (resize, flips, logits back),
post-processing, the denoiser pre-stage, volume prediction and the reading of image files.

Imported by training (``lit``), evaluation, ``src.predict`` and the viewer; imports none of
them, so what a checkpoint means is decided in one place."""
