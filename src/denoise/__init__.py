"""Despeckling before segmentation: classical filters (``classical``), the DiConvAE network
(``diconvae``), denoising losses (``losses``), PSNR/SSIM (``metrics``), training pairs
(``pairs``) and the pre-stage that puts a denoiser in front of a segmenter (``prestage``).

Pure torch / numpy / OpenCV: Lightning and Hydra live in ``src.lit.denoising`` and the entry
points (``src.train_denoiser``, ``src.train``).
"""
