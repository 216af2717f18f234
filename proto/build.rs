//! Compiles `proto/elysium/v1/*.proto` with `protox` (a protobuf compiler written in
//! Rust), so a fresh machine builds without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/elysium/v1/elysium.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Small per-call buffers (src/lib.rs, `Codec`).
        .codec_path("crate::Codec")
        // Messages carrying private keys, tokens or secret values get a redacting
        // Debug by hand (src/lib.rs).
        .skip_debug([
            ".elysium.v1.SealingKeyReport",
            ".elysium.v1.ExportSealingKeysResponse",
            ".elysium.v1.ExportSealingKeysChunk",
            ".elysium.v1.EnrollRequest",
            ".elysium.v1.NodeSpec",
            ".elysium.v1.K3sAssignment",
            ".elysium.v1.K3sReport",
            ".elysium.v1.SetSecretRequest",
            ".elysium.v1.CreateTokenResponse",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}
