//! The device a backend runs on, found once per process, and what the
//! agent reports about it (hello, health, `/metrics`).

use crate::Backend;
use burn::tensor::Device;
use std::sync::OnceLock;

/// A backend's device as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    /// `cpu`, `wgpu` or `cuda`.
    pub backend: &'static str,
    /// The adapter's name as its driver gives it (`NVIDIA H100`, `llvmpipe
    /// (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// The graphics API under wgpu (`Vulkan`, `Metal`, `Dx12`), or the
    /// backend's name.
    pub api: String,
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu` or `cpu` (a software
    /// rasteriser such as Mesa's lavapipe is `cpu`).
    pub kind: String,
    /// Device memory in bytes, where the backend reports it (wgpu does
    /// not).
    pub memory_bytes: Option<u64>,
}

impl Adapter {
    /// Whether this is a GPU (not the CPU backend, not a software driver).
    pub fn is_gpu(&self) -> bool {
        self.kind.ends_with("-gpu")
    }
}

type Probed = Result<(Device, Adapter), String>;

#[cfg(feature = "wgpu")]
fn wgpu_probe() -> &'static Probed {
    static WGPU: OnceLock<Probed> = OnceLock::new();
    WGPU.get_or_init(|| {
        use burn::tensor::wgpu::wgpu::DeviceType;
        // wgpu panics inside some drivers' initialisation; no adapter is
        // an answer, not a crash.
        let setup = std::panic::catch_unwind(|| Device::wgpu_options().init_with_setup())
            .map_err(|_| "the wgpu driver panicked during initialisation".to_string())?
            .map_err(|e| format!("no usable wgpu adapter: {e}"))?;
        let (device, setup) = setup;
        let info = setup.adapter.get_info();
        // wgpu falls back to OpenGL where no Vulkan, Metal or DX12 driver is
        // installed. Its compute path there is not one this engine is
        // checked on (a linear Resize came out 4 % off over Mesa's
        // llvmpipe), so it is no adapter for burn.
        if info.backend == burn::tensor::wgpu::wgpu::Backend::Gl {
            return Err(format!(
                "wgpu found only OpenGL ({}); the burn engine needs Vulkan, Metal or DX12 (on Linux: the GPU's Vulkan driver, or mesa-vulkan-drivers)",
                info.name
            ));
        }
        let kind = match info.device_type {
            DeviceType::DiscreteGpu => "discrete-gpu",
            DeviceType::IntegratedGpu => "integrated-gpu",
            DeviceType::VirtualGpu => "virtual-gpu",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        };
        Ok((
            device,
            Adapter {
                backend: "wgpu",
                name: info.name,
                api: format!("{:?}", info.backend),
                kind: kind.to_string(),
                memory_bytes: None,
            },
        ))
    })
}

fn cpu_probe() -> &'static Probed {
    static CPU: OnceLock<Probed> = OnceLock::new();
    CPU.get_or_init(|| {
        Ok((
            Device::flex(),
            Adapter {
                backend: "cpu",
                name: "burn CPU backend (flex)".to_string(),
                api: "cpu".to_string(),
                kind: "cpu".to_string(),
                memory_bytes: None,
            },
        ))
    })
}

#[cfg(feature = "cuda")]
fn cuda_probe() -> &'static Probed {
    static CUDA: OnceLock<Probed> = OnceLock::new();
    CUDA.get_or_init(|| {
        let device = std::panic::catch_unwind(|| {
            let d = Device::cuda(0usize);
            // Touch the device: a host without a CUDA driver fails here.
            let t = burn::tensor::Tensor::<1>::zeros([1], &d);
            t.into_data();
            d
        })
        .map_err(|_| "no usable CUDA device (driver missing or no GPU)".to_string())?;
        Ok((
            device,
            Adapter {
                backend: "cuda",
                name: "CUDA device 0".to_string(),
                api: "cuda".to_string(),
                kind: "discrete-gpu".to_string(),
                memory_bytes: None,
            },
        ))
    })
}

fn probe(backend: Backend) -> &'static Probed {
    match backend {
        Backend::Cpu => cpu_probe(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => wgpu_probe(),
        #[cfg(feature = "cuda")]
        Backend::Cuda => cuda_probe(),
    }
}

/// The device `backend` runs on, found on first use; an error when the
/// host has none (no driver, no adapter).
pub fn device(backend: Backend) -> Result<Device, String> {
    probe(backend)
        .as_ref()
        .map(|(d, _)| d.clone())
        .map_err(Clone::clone)
}

/// What `backend` runs on, or why it cannot run here.
pub fn adapter(backend: Backend) -> Result<Adapter, String> {
    probe(backend)
        .as_ref()
        .map(|(_, a)| a.clone())
        .map_err(Clone::clone)
}

/// The first compiled backend with a real GPU on this host, if any.
pub fn first_gpu() -> Option<(Backend, Adapter)> {
    Backend::compiled()
        .into_iter()
        .filter(|b| *b != Backend::Cpu)
        .find_map(|b| adapter(b).ok().filter(Adapter::is_gpu).map(|a| (b, a)))
}
