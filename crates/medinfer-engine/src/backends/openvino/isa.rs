//! The instruction-set cap for oneDNN, the kernel library inside OpenVINO's CPU plugin.
//!
//! oneDNN picks the newest instruction set the CPU has. On Intel CPUs with AMX that means AMX
//! tile kernels for INT8 (and BF16) convolutions, which are not always the fastest: measured on a
//! 2-vCPU Xeon with AMX (docs/benchmarks.md), the INT8 ResNet-50 at batch 8 x 45 x 45 ran 20%
//! faster on AVX-512 VNNI kernels, while the INT8 U-Nets ran 30% slower. The choice depends on the
//! model, so medinfer leaves oneDNN's default alone and lets the user cap it (`--cpu-isa`), and
//! `medinfer bench` shows both side by side.
//!
//! oneDNN reads its cap once, from the environment variable `ONEDNN_MAX_CPU_ISA`, the first time
//! it dispatches a kernel; there is no per-model setting. So the cap is per process and must be
//! set before OpenVINO is first used. ONNX Runtime (MLAS) and tract do not read it.
use crate::EngineError;

/// The environment variable oneDNN reads its instruction-set cap from.
pub const ONEDNN_ISA_ENV: &str = "ONEDNN_MAX_CPU_ISA";

/// The newest instruction set OpenVINO's kernels may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuIsa {
    /// No cap: oneDNN uses everything the CPU has.
    Auto,
    /// AVX2 (no AVX-512).
    Avx2,
    /// AVX2 with VNNI (AVX-VNNI) INT8 dot products.
    Avx2Vnni,
    /// AVX-512 without VNNI or BF16.
    Avx512,
    /// AVX-512 with VNNI INT8 dot products, no BF16 or AMX.
    Avx512Vnni,
    /// AVX-512 with VNNI and BF16, no AMX.
    Avx512Bf16,
    /// Everything up to AMX tiles (INT8 and BF16).
    Amx,
}

impl CpuIsa {
    /// Every value, in the order `--help` lists them.
    pub const ALL: [CpuIsa; 7] = [
        CpuIsa::Auto,
        CpuIsa::Avx2,
        CpuIsa::Avx2Vnni,
        CpuIsa::Avx512,
        CpuIsa::Avx512Vnni,
        CpuIsa::Avx512Bf16,
        CpuIsa::Amx,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Auto => "auto",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Avx2Vnni => "avx2-vnni",
            CpuIsa::Avx512 => "avx512",
            CpuIsa::Avx512Vnni => "avx512-vnni",
            CpuIsa::Avx512Bf16 => "avx512-bf16",
            CpuIsa::Amx => "amx",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<CpuIsa> {
        let s = s.to_ascii_lowercase().replace('_', "-");
        CpuIsa::ALL.into_iter().find(|i| i.name() == s)
    }

    /// oneDNN's name for the cap (`None` for [`CpuIsa::Auto`]).
    pub fn onednn_name(self) -> Option<&'static str> {
        Some(match self {
            CpuIsa::Auto => return None,
            CpuIsa::Avx2 => "AVX2",
            CpuIsa::Avx2Vnni => "AVX2_VNNI",
            CpuIsa::Avx512 => "AVX512_CORE",
            CpuIsa::Avx512Vnni => "AVX512_CORE_VNNI",
            CpuIsa::Avx512Bf16 => "AVX512_CORE_BF16",
            CpuIsa::Amx => "AVX512_CORE_AMX",
        })
    }
}

impl CpuIsa {
    /// The `/proc/cpuinfo` flags a CPU needs for this cap to mean what it says (none for
    /// [`CpuIsa::Auto`]).
    pub fn required_flags(self) -> &'static [&'static str] {
        match self {
            CpuIsa::Auto => &[],
            CpuIsa::Avx2 => &["avx2", "fma"],
            CpuIsa::Avx2Vnni => &["avx2", "fma", "avx_vnni"],
            CpuIsa::Avx512 => &["avx512f", "avx512bw", "avx512vl", "avx512dq"],
            CpuIsa::Avx512Vnni => &["avx512f", "avx512bw", "avx512vl", "avx512_vnni"],
            CpuIsa::Avx512Bf16 => &["avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"],
            CpuIsa::Amx => &["amx_tile", "amx_int8", "amx_bf16"],
        }
    }

    /// The flags this CPU lacks for the cap (empty: the cap is usable here).
    pub fn missing_here(self) -> Vec<&'static str> {
        let have = cpu_flags();
        self.required_flags()
            .iter()
            .copied()
            .filter(|f| !have.contains(*f))
            .collect()
    }

    /// The caps worth comparing on this CPU for INT8 (`bf16 == false`) or BF16 kernels:
    /// [`CpuIsa::Auto`] (everything the CPU has) and the next lower tier that still runs them
    /// natively but with other kernels. INT8: AMX tiles -> AVX-512 VNNI (the BF16 tier's INT8
    /// kernels are VNNI's), AVX-VNNI -> AVX2. BF16: AMX -> AVX-512 BF16 (below it BF16 is
    /// emulated).
    pub fn tiers_here(bf16: bool) -> Vec<CpuIsa> {
        let mut out = vec![CpuIsa::Auto];
        let usable = |i: CpuIsa| i.missing_here().is_empty();
        if usable(CpuIsa::Amx) {
            out.push(if bf16 {
                CpuIsa::Avx512Bf16
            } else {
                CpuIsa::Avx512Vnni
            });
        } else if !bf16 && usable(CpuIsa::Avx2Vnni) && !usable(CpuIsa::Avx512) {
            out.push(CpuIsa::Avx2);
        }
        out
    }
}

/// The CPU feature flags of this machine, as `/proc/cpuinfo` names them (empty where it cannot
/// be read).
pub fn cpu_flags() -> std::collections::HashSet<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

impl std::fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The cap oneDNN sees in this process (`ONEDNN_MAX_CPU_ISA`), or `None` when uncapped.
pub fn cpu_isa_cap() -> Option<String> {
    std::env::var(ONEDNN_ISA_ENV)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Caps the instruction set of OpenVINO's kernels for the rest of this process
/// ([`CpuIsa::Auto`] removes any cap, one inherited from the environment included).
///
/// Call it at the start of `main`, before any other thread exists: it sets an environment
/// variable, and the C library's `getenv` in another thread could read the environment while it
/// changes. Fails when OpenVINO was already loaded, because oneDNN would keep the cap it read.
pub fn set_cpu_isa(isa: CpuIsa) -> Result<(), EngineError> {
    if super::loaded() && cpu_isa_cap().as_deref() != isa.onednn_name() {
        return Err(EngineError::BadInput(format!(
            "the CPU instruction-set cap ({isa}) must be chosen before OpenVINO is first used in \
             this process"
        )));
    }
    match isa.onednn_name() {
        Some(v) => std::env::set_var(ONEDNN_ISA_ENV, v),
        None => std::env::remove_var(ONEDNN_ISA_ENV),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_onednn() {
        for isa in CpuIsa::ALL {
            assert_eq!(CpuIsa::parse(isa.name()), Some(isa));
        }
        assert_eq!(CpuIsa::parse("AVX512_VNNI"), Some(CpuIsa::Avx512Vnni));
        assert_eq!(CpuIsa::parse("sse"), None);
        assert_eq!(CpuIsa::Auto.onednn_name(), None);
        assert_eq!(CpuIsa::Avx512Vnni.onednn_name(), Some("AVX512_CORE_VNNI"));
        assert_eq!(CpuIsa::Amx.onednn_name(), Some("AVX512_CORE_AMX"));
    }
}
