//! `lpl doctor`: what libtorch this process really loaded, and whether it can compute.
//!
//! The report reads the libtorch in use from the process's own memory map (not from an
//! environment variable), so it tells the truth about rpaths and `--as-needed`.

use std::fmt;
use std::path::{Path, PathBuf};

use lpl_torch_build::{REQUIRED_TORCH_VERSION, base_version, read_version};
use tch::{Cuda, Device, Kind, Tensor};

/// The environment as `lpl doctor` reports it.
#[derive(Debug, Clone)]
pub struct Report {
    pub tch_version: &'static str,
    /// libtorch `lib/` directory this binary was linked against (rpath).
    pub build_lib_dir: &'static str,
    /// libtorch `lib/` directory of the `libtorch_cpu` mapped into this process.
    pub loaded_lib_dir: Option<PathBuf>,
    /// Version of the loaded libtorch (`build-version` or `version.py` beside `lib/`).
    pub libtorch_version: Option<String>,
    /// Whether `libtorch_cuda` is mapped into this process.
    pub cuda_linked: bool,
    pub cuda_available: bool,
    pub cuda_devices: Vec<String>,
    pub cudnn_available: bool,
    pub cudnn_version: Option<i64>,
    pub cpu_threads: i32,
    /// Devices on which a bf16 autocast matmul ran and gave bf16 (`cpu`, `cuda:0`).
    pub bf16_autocast: Vec<String>,
    /// Whether CUDA f32 matmuls use TF32 (libtorch's default: off; `lpl train` turns it on
    /// unless `precision.tf32 = false`).
    pub tf32_matmul: Option<bool>,
    /// The torch.distributed backends this build has (`gloo`, `nccl`).
    pub distributed_backends: Vec<&'static str>,
    /// Everything that is off, one line each; empty when healthy.
    pub problems: Vec<String>,
}

impl Report {
    /// Inspects this process and runs a tiny computation on every usable device.
    pub fn collect() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let loaded = mapped_library(&maps, "libtorch_cpu.so");
        let loaded_lib_dir = loaded.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        let build_lib_dir = env!("LPL_LIBTORCH_LIB");
        let version_root = loaded_lib_dir.clone().unwrap_or_else(|| PathBuf::from(build_lib_dir));
        let libtorch_version = version_root.parent().and_then(read_version);
        let cuda_linked = mapped_library(&maps, "libtorch_cuda.so").is_some();
        let cuda_available = Cuda::is_available();
        let device_count = if cuda_available { Cuda::device_count() } else { 0 };
        let names = gpu_names();
        let cuda_devices = (0..device_count)
            .map(|i| {
                let name =
                    names.get(i as usize).cloned().unwrap_or_else(|| "unknown name".to_string());
                format!("cuda:{i} {name}")
            })
            .collect();
        let cudnn_available = cuda_available && Cuda::cudnn_is_available();
        let cudnn_version = cudnn_available.then(tch::utils::version_cudnn);

        let mut problems = Vec::new();
        match &libtorch_version {
            Some(v) if base_version(v) == REQUIRED_TORCH_VERSION => {}
            Some(v) => problems.push(format!(
                "loaded libtorch is {v}, but tch {} requires {REQUIRED_TORCH_VERSION}",
                env!("LPL_TCH_VERSION")
            )),
            None => problems.push(format!(
                "cannot read the version of the libtorch in {}",
                version_root.display()
            )),
        }
        if cfg!(target_os = "linux") && loaded.is_none() {
            problems.push("libtorch_cpu.so is not mapped into this process".to_string());
        }
        let cuda_shipped =
            loaded_lib_dir.as_ref().is_some_and(|d| d.join("libtorch_cuda.so").exists());
        if cuda_shipped && !cuda_linked {
            problems.push(
                "libtorch_cuda.so exists but is not linked (built without --no-as-needed?): CUDA is unavailable"
                    .to_string(),
            );
        }
        if cuda_linked && !names.is_empty() && !cuda_available {
            problems.push(format!(
                "{} NVIDIA GPU(s) present but CUDA is unavailable to libtorch (driver too old for CUDA 13?)",
                names.len()
            ));
        }
        if let Err(e) = smoke(Device::Cpu) {
            problems.push(format!("a tiny computation on cpu failed: {e}"));
        }
        if cuda_available && let Err(e) = smoke(Device::Cuda(0)) {
            problems.push(format!("a tiny computation on cuda:0 failed: {e}"));
        }
        let mut bf16_autocast = Vec::new();
        let devices = std::iter::once(Device::Cpu).chain(cuda_available.then_some(Device::Cuda(0)));
        for device in devices {
            let name = if device.is_cuda() { "cuda:0" } else { "cpu" };
            match smoke_bf16(device) {
                Ok(()) => bf16_autocast.push(name.to_string()),
                Err(e) => problems.push(format!("bf16 autocast on {name} failed: {e}")),
            }
        }
        let tf32_matmul = lpl_torch_ext::tf32::get().ok().map(|(matmul, _)| matmul);
        Self {
            tch_version: env!("LPL_TCH_VERSION"),
            build_lib_dir,
            loaded_lib_dir,
            libtorch_version,
            cuda_linked,
            cuda_available,
            cuda_devices,
            cudnn_available,
            cudnn_version,
            cpu_threads: tch::get_num_threads(),
            bf16_autocast,
            tf32_matmul,
            distributed_backends: [
                ("gloo", lpl_torch_ext::distributed::has_gloo()),
                ("nccl", lpl_torch_ext::distributed::has_nccl()),
            ]
            .into_iter()
            .filter_map(|(name, has)| has.then_some(name))
            .collect(),
            problems,
        }
    }

    /// Whether nothing is off.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_string());
        writeln!(f, "tch              {}", self.tch_version)?;
        writeln!(f, "libtorch         {}", or_unknown(self.libtorch_version.clone()))?;
        writeln!(
            f,
            "libtorch path    {}",
            or_unknown(self.loaded_lib_dir.as_ref().map(|p| p.display().to_string()))
        )?;
        writeln!(f, "linked against   {}", self.build_lib_dir)?;
        writeln!(f, "libtorch_cuda    {}", if self.cuda_linked { "linked" } else { "not linked" })?;
        writeln!(f, "CUDA available   {}", self.cuda_available)?;
        writeln!(f, "CUDA devices     {}", self.cuda_devices.len())?;
        for device in &self.cuda_devices {
            writeln!(f, "  {device}")?;
        }
        let cudnn = match self.cudnn_version {
            Some(v) => format!("true (version {v})"),
            None => "false".to_string(),
        };
        writeln!(f, "cuDNN available  {cudnn}")?;
        let bf16 = if self.bf16_autocast.is_empty() {
            "unavailable".to_string()
        } else {
            self.bf16_autocast.join(", ")
        };
        writeln!(f, "bf16 autocast    {bf16}")?;
        let tf32 = self.tf32_matmul.map_or("unknown".to_string(), |t| t.to_string());
        writeln!(f, "TF32 matmul      {tf32} (lpl train sets precision.tf32, default true)")?;
        let backends = if self.distributed_backends.is_empty() {
            "none (one process only: install libgloo-dev and rebuild for Gloo; `cargo xtask \
             setup` for NCCL's headers)"
                .to_string()
        } else {
            self.distributed_backends.join(", ")
        };
        writeln!(f, "distributed      {backends}")?;
        write!(f, "CPU threads      {}", self.cpu_threads)
    }
}

/// The path of the first mapped file named `name` in the text of `/proc/self/maps`.
fn mapped_library(maps: &str, name: &str) -> Option<PathBuf> {
    maps.lines().find_map(|line| {
        let path = line.split_whitespace().nth(5)?;
        (Path::new(path).file_name()?.to_str()? == name).then(|| PathBuf::from(path))
    })
}

/// GPU model names from the NVIDIA driver's procfs entries (sorted by PCI bus id, the
/// order CUDA enumerates by default), falling back to nothing where they are absent.
fn gpu_names() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    let mut gpus: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path().join("information")).ok()?;
            let model = info.lines().find_map(|l| l.strip_prefix("Model:"))?.trim().to_string();
            Some((e.file_name().to_string_lossy().to_string(), model))
        })
        .collect();
    gpus.sort();
    gpus.into_iter().map(|(_, model)| model).collect()
}

/// A 2x3 @ 3x2 matrix product whose sum is known exactly (f32 integers).
fn smoke(device: Device) -> Result<(), tch::TchError> {
    let a = Tensor::f_arange(6, (Kind::Float, device))?.f_view([2, 3])?;
    let b = Tensor::f_ones([3, 2], (Kind::Float, device))?;
    let sum = f64::try_from(a.f_matmul(&b)?.f_sum(Kind::Float)?)?;
    if sum != 30.0 {
        return Err(tch::TchError::Kind(format!("expected 30, got {sum}")));
    }
    Ok(())
}

/// The same product under bf16 autocast: the result must be bf16 and exact (small integers).
fn smoke_bf16(device: Device) -> Result<(), String> {
    let _region = lpl_torch_ext::Autocast::enter(device, lpl_torch_ext::AutocastDtype::BFloat16)
        .map_err(|e| e.to_string())?;
    let a = Tensor::f_arange(6, (Kind::Float, device)).and_then(|a| a.f_view([2, 3]));
    let b = Tensor::f_ones([3, 2], (Kind::Float, device));
    let product = a.and_then(|a| b.and_then(|b| a.f_matmul(&b))).map_err(|e| e.to_string())?;
    if product.kind() != Kind::BFloat16 {
        return Err(format!("the product came out {:?}, not bf16", product.kind()));
    }
    let sum = product.to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
    if sum != 30.0 {
        return Err(format!("expected 30, got {sum}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mapped_library_by_file_name() {
        let maps = "7f00-7f10 r-xp 00000000 08:01 123 /opt/torch/lib/libtorch_cpu.so\n\
                    7f10-7f20 r--p 00000000 08:01 124 /opt/torch/lib/libtorch_cuda.so.bak\n\
                    7f20-7f30 rw-p 00000000 00:00 0 \n";
        assert_eq!(
            mapped_library(maps, "libtorch_cpu.so"),
            Some(PathBuf::from("/opt/torch/lib/libtorch_cpu.so"))
        );
        assert_eq!(mapped_library(maps, "libtorch_cuda.so"), None);
    }

    #[test]
    fn smoke_computation_passes_on_cpu() {
        smoke(Device::Cpu).unwrap();
        smoke_bf16(Device::Cpu).unwrap();
    }
}
