//! The `elysium.v1` wire contract: generated messages, clients and servers.
//!
//! This crate owns only the wire format. Conversions to domain types live with the
//! code that uses them (coordinator, agent).

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("elysium.v1");

    // By hand (build.rs skips the derived ones): never format private keys.
    impl std::fmt::Debug for SealingKeyReport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SealingKeyReport")
                .field("namespace", &self.namespace)
                .field("name", &self.name)
                .field("uid", &self.uid)
                .field("resource_version", &self.resource_version)
                .field("labels", &self.labels)
                .field("tls_crt_bytes", &self.tls_crt.len())
                .field("tls_key", &"<redacted>")
                .field("created_unix", &self.created_unix)
                .finish()
        }
    }

    impl std::fmt::Debug for ExportSealingKeysResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ExportSealingKeysResponse")
                .field("keys", &self.keys)
                .field("keys_yaml", &"<redacted>")
                .field("k3s_server_token", &"<redacted>")
                .finish()
        }
    }

    /// What `Debug` shows of a secret string: whether it is set, never its value.
    fn redacted(s: &str) -> &'static str {
        if s.is_empty() { "<none>" } else { "<redacted>" }
    }

    impl std::fmt::Debug for EnrollRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EnrollRequest")
                .field("token", &redacted(&self.token))
                .field("csr_der_bytes", &self.csr_der.len())
                .field("requested_name", &self.requested_name)
                .field("inventory", &self.inventory)
                .field("hardware_json_bytes", &self.hardware_json.len())
                .finish()
        }
    }

    impl std::fmt::Debug for NodeSpec {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NodeSpec")
                .field("generation", &self.generation)
                .field("cluster_spec_toml_bytes", &self.cluster_spec_toml.len())
                .field("role", &self.role)
                .field("labels", &self.labels)
                .field("k3s", &self.k3s)
                // Names only.
                .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
                .finish()
        }
    }

    impl std::fmt::Debug for K3sAssignment {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("K3sAssignment")
                .field("role", &self.role)
                .field("server_url", &self.server_url)
                .field("token", &redacted(&self.token))
                .field("version", &self.version)
                .field("k3s_role", &self.k3s_role)
                .field("agent_token", &redacted(&self.agent_token))
                .finish()
        }
    }

    impl std::fmt::Debug for K3sReport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("K3sReport")
                .field("server_token", &redacted(&self.server_token))
                .field("version", &self.version)
                .field("failed_version", &self.failed_version)
                .field("failure", &self.failure)
                .field("agent_token", &redacted(&self.agent_token))
                .finish()
        }
    }

    impl std::fmt::Debug for SetSecretRequest {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SetSecretRequest")
                .field("name", &self.name)
                .field("value", &redacted(&self.value))
                .finish()
        }
    }

    impl std::fmt::Debug for CreateTokenResponse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CreateTokenResponse")
                .field("token", &redacted(&self.token))
                .field("info", &self.info)
                .finish()
        }
    }

    impl std::fmt::Debug for ExportSealingKeysChunk {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ExportSealingKeysChunk")
                .field("keys_yaml_bytes", &self.keys_yaml.len())
                .field("keys", &self.keys)
                .field("total_bytes", &self.total_bytes)
                .field("k3s_server_token", &"<redacted>")
                .finish()
        }
    }
}

/// The codec of every service: prost's, with small initial buffers.
///
/// tonic allocates an encode and a decode buffer per call up front, 8 KiB each
/// by default, and keeps them for the call's life. A node session is one call
/// that lives as long as the node, mostly passing heartbeats of a few dozen
/// bytes; with 5,000 nodes the defaults held 80 MiB of the coordinator's memory
/// (docs/BENCHMARKS-fleet.md). The buffers still grow to the largest message a
/// call carries (a spec, a hardware inventory).
#[derive(Debug)]
pub struct Codec<T, U>(std::marker::PhantomData<fn(T) -> U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// Initial buffer per direction per call; see [`Codec`].
pub const CODEC_BUFFER_BYTES: usize = 512;

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(buffer_settings())
    }
}

fn buffer_settings() -> tonic::codec::BufferSettings {
    // The yield threshold (how much a streaming response batches before
    // flushing) stays at tonic's default.
    tonic::codec::BufferSettings::new(CODEC_BUFFER_BYTES, 32 * 1024)
}

/// Name of the wire protocol agents announce in `Hello.protocol`.
pub const PROTOCOL: &str = "elysium.v1";

/// Upper bound for any single gRPC message on every service. Our largest
/// legitimate message is a cluster spec or a node record, well under this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// `Hello.hardware_sha256`: lowercase hex SHA-256 of the hardware document's
/// bytes. Agents send it, and the coordinator compares it with the hash of the
/// document it stored, so both sides must compute it here.
pub fn hardware_sha256(doc: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(doc.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::v1::*;

    const MARKER: &str = "M4RK3R-s3cret";

    /// Every message that carries a secret formats without it.
    #[test]
    fn debug_never_shows_a_secret() {
        let assignment = K3sAssignment {
            token: format!("K10abc::server:{MARKER}"),
            agent_token: MARKER.into(),
            server_url: "https://s:6443".into(),
            ..Default::default()
        };
        let spec = NodeSpec {
            k3s: Some(assignment.clone()),
            secrets: [("ts".to_string(), MARKER.to_string())].into(),
            ..Default::default()
        };
        let shown = [
            format!("{:?}", EnrollRequest { token: MARKER.into(), ..Default::default() }),
            format!("{:?}", EnrollResponse { spec: Some(spec.clone()), ..Default::default() }),
            format!("{spec:?}"),
            format!("{assignment:?}"),
            format!(
                "{:?}",
                K3sReport { server_token: MARKER.into(), agent_token: MARKER.into(), ..Default::default() }
            ),
            format!(
                "{:?}",
                AgentMessage {
                    msg: Some(agent_message::Msg::K3s(K3sReport {
                        server_token: MARKER.into(),
                        ..Default::default()
                    })),
                }
            ),
            format!("{:?}", CoordinatorMessage { msg: Some(coordinator_message::Msg::Spec(spec.clone())) }),
            format!("{:?}", SetSecretRequest { name: "ts".into(), value: MARKER.into() }),
            format!("{:?}", CreateTokenResponse { token: MARKER.into(), info: None }),
            format!("{:?}", SealingKeyReport { tls_key: MARKER.as_bytes().to_vec(), ..Default::default() }),
            format!(
                "{:?}",
                ExportSealingKeysResponse {
                    keys_yaml: MARKER.into(),
                    k3s_server_token: MARKER.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ExportSealingKeysChunk {
                    keys_yaml: MARKER.as_bytes().to_vec(),
                    k3s_server_token: MARKER.into(),
                    ..Default::default()
                }
            ),
        ];
        for s in &shown {
            assert!(!s.contains(MARKER), "Debug shows a secret: {s}");
        }
        assert!(shown[3].contains("https://s:6443"), "what is not secret is still shown: {}", shown[3]);
    }
}
