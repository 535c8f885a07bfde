//! # lpl-schedulers
//!
//! The mathematics shared by training, the LPL gate and sampling: discrete variance-preserving
//! noise schedules (linear, scaled-linear, cosine, zero-terminal-SNR rescale) and rectified
//! flow with time shift; the parameterisations eps, v, x0 and flow velocity with exact
//! conversions to x0 and to the training target; training-time t sampling; samplers (DDPM,
//! DDIM, Euler, Heun, DPM-Solver++(2M), flow Euler/Heun) as functions over a time grid; and
//! classifier-free guidance as a wrapper around any denoiser.
//!
//! Every quantity is a per-sample tensor: a batch carries one t per sample, shape `(B,)`.
//! Depends on nothing else of lpl.
