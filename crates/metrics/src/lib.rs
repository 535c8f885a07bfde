//! # lpl-metrics
//!
//! What an ablation table reports: Frechet distances (f64, stable matrix square root) in the
//! features of real pretrained networks (EfficientNet-Lite0 by default, the pytorch-fid
//! Inception-v3 when its weights are given), precision/recall and density/coverage, radially
//! averaged power spectra with per-band errors, PSNR/SSIM, and PNG image grids.
//!
//! Depends on nothing else of lpl.
