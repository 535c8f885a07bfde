//! libtorch's profiler (Kineto, the engine behind `torch.profiler`): records every ATen op
//! with its input shapes, CPU time and, on CUDA, the kernels, and writes a Chrome trace that
//! Perfetto (ui.perfetto.dev) and `chrome://tracing` open.

use std::path::{Path, PathBuf};

use crate::{Result, TorchExtError, ffi};

/// A running profile; [`Profile::save`] stops it and writes the trace. Dropped unsaved, it
/// stops without writing.
#[derive(Debug)]
pub struct Profile {
    running: bool,
}

impl Profile {
    /// Starts recording this process's CPU activity, and CUDA's when `cuda`.
    pub fn start(cuda: bool) -> Result<Self> {
        ffi::profiler_start(cuda)?;
        Ok(Self { running: true })
    }

    /// Stops recording and writes the Chrome trace (JSON) at `path`.
    pub fn save(mut self, path: &Path) -> Result<PathBuf> {
        self.running = false;
        let text = path.to_str().ok_or_else(|| TorchExtError {
            call: "profiler_stop",
            message: format!("{} is not UTF-8", path.display()),
        })?;
        let c = std::ffi::CString::new(text)
            .map_err(|e| TorchExtError { call: "profiler_stop", message: e.to_string() })?;
        ffi::profiler_stop(&c)?;
        Ok(path.to_path_buf())
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if self.running {
            // stop without a file: /dev/null takes the trace
            if let Ok(c) = std::ffi::CString::new("/dev/null") {
                let _ = ffi::profiler_stop(&c);
            }
        }
    }
}
