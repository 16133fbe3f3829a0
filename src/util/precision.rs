//! `--precision`: the arithmetic of convolutions and matmuls. One type, parsed once where a
//! flag or a config file is read; `config.json` spells it as before (`"fp32"`, `"bf16"`).

use serde::{Deserialize, Serialize};
use tch::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// bf16 mixed precision: bf16 convolutions and matmuls, fp32 normalisation statistics,
    /// master weights and optimizer state.
    Bf16,
}

impl Precision {
    /// The kind convolutions and matmuls run in.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    /// As the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_keep_their_spelling() {
        for p in [Precision::Fp32, Precision::Bf16] {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(serde_json::from_str::<Precision>(&json).unwrap(), p);
        }
        let err = serde_json::from_str::<Precision>("\"fp16\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
        assert_eq!(Precision::default(), Precision::Fp32);
    }
}
