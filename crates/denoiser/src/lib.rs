//! # lpl-denoiser
//!
//! The networks that get trained: the object-safe `Denoiser` trait
//! (`forward(x_t: (B,C,H,W), t: (B,), cond) -> (B,C,H,W)`), a DiT mirroring diffusers'
//! `DiTTransformer2DModel` (presets S/B/L/XL x patch 2/4/8 and a tiny one) and a UNet of the
//! diffusers `UNet2DModel` family, both class-conditional with label dropout for
//! classifier-free guidance, plus parameter counts and model summaries.
//!
//! Depends on nothing else of lpl.
